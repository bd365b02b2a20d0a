"""Containers: the engine and its socket, image references, the OCI registry client, signatures, add-ons."""
