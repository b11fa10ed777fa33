"""Operator services: dead letters, jobs, tier health, pauses and overrides, audit.

The admin API (:mod:`tierbox.api`) and the CLI (:mod:`tierbox.cli`) are two thin
front ends over these functions, so a redrive from ``curl`` and one from a shell
run the same code and land in the same audit table.
"""
