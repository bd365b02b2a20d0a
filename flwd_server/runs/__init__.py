"""Executing runs: the runner (claims, steps, cancel, shutdown) and the host and container executors."""
