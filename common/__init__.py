"""Shared plumbing: config, partition paths, table schemas, atomic publish, logging."""
