"""Sources that produce the raw contract: the synthetic generator and public-data adapters."""
