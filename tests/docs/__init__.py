"""Tests that keep the README and docs/ true: examples run, tables match the code."""
