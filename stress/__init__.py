"""Stress runs: the library under load and faults, on real servers and databases."""
