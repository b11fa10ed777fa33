"""Tierbox benchmarks against its peers, measured in the same run (``make bench``; see bench/README.md)."""
