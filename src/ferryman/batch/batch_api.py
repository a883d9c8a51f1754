"""The Batch API driver (being written): split, upload, create, poll, download, merge."""

from __future__ import annotations

from typing import Any


class BatchAPIRunner:
    def __init__(self, settings: Any, journal: Any, lines: dict[str, Any], **options: Any) -> None:
        raise NotImplementedError("--via batch-api is not available yet")

    def run_blocking(self, pending: list[Any]) -> None:
        raise NotImplementedError
