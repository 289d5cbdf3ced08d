"""Helpers the test modules share: plain functions, classes and constants, no fixtures (those
are in the conftest.py files)."""
