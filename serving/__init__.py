"""mlzero serving package."""
