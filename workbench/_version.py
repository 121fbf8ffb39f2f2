"""The package version (one place; run.json and the report record it)."""

__version__ = "0.1.0"
