"""Events on their way out: the per-process hub, wake-ups between processes, SSE framing, the broadcaster."""
