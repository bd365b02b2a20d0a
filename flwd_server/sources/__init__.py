"""Job sources: where job files come from (local folders, git, OCI add-ons)."""

from .base import Source, SourceSnapshot, scan_jobs
from .local import LocalSource

__all__ = ["LocalSource", "Source", "SourceSnapshot", "scan_jobs"]
