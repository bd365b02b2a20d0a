"""Readers of the files people write for flwd (server.yaml, job files), one way everywhere."""
