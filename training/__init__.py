"""mlzero training package."""
