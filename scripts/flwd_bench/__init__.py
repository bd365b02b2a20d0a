"""flwd's benchmark: flwd measured side by side with the peer `webhook` (docs/performance.rst)."""
