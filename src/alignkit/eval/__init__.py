"""alignkit.eval"""
