"""Everything that shapes how the mock behaves, settable from the CLI and at run time."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ferryman.mock.faults import FaultRule

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
# OpenAI accepts file uploads up to 512 MB; the mock keeps them in memory, so its own cap is
# lower by default and settable.
DEFAULT_MAX_FILE_BYTES = 512 * 1024 * 1024


@dataclass
class MockSettings:
    rpm: int | None = None  # requests per minute per key; None = unlimited
    tpm: int | None = None  # tokens per minute per key
    quota_usd: float | None = None  # dollars a key may spend before 429 insufficient_quota
    keys: frozenset[str] | None = None  # accepted API keys; None = any bearer token
    latency_ms: float = 0.0  # added before every reply
    batch_seconds: float = 6.0  # how long a batch takes from validating to completed
    finetune_seconds: float = 6.0  # how long a fine-tuning job takes from validating to done
    faults: list[FaultRule] = field(default_factory=list)
    fixtures_path: Path | None = None
    state_dir: Path | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    request_log_size: int = 100_000  # how many requests the control API remembers
