"""The files people write for flwd (server.yaml, job files), read one way everywhere, and files written whole."""
