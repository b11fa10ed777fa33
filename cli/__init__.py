"""The ``tierbox`` command line: one entry point for every Tierbox process and chore."""
