"""Runnable examples of Tierbox (not installed with the package)."""
