"""alignkit.plan"""
