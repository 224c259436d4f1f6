"""mlzero scratch package."""
