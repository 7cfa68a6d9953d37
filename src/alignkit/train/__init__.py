"""alignkit.train"""
