"""flwd: a job runner with a CLI and an HTTP + SSE serve mode."""

__version__ = "0.1.0"
