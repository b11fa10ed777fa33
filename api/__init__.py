"""Operator surface: the tierbox CLI (and, later, the Litestar admin API)."""
