"""What the search is compared against: a registry of baseline networks (``create_baseline``)."""
