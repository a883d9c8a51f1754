"""Everything that shapes how the mock behaves, settable from the CLI and at run time.

``today`` is the date the mock acts on: a model past its shutdown date (``ferryman.catalogue``)
is refused as OpenAI refuses it. Unset, it is ``FERRYMAN_MOCK_TODAY`` (``YYYY-MM-DD``) when that
is set, so every mock a test suite starts (in-process, the pytest plugin's, a ``ferryman mock``
subprocess) can act on one date, else the real date (UTC).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

from ferryman.mock.faults import FaultRule

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
# OpenAI accepts file uploads up to 512 MB; the mock keeps them in memory, so its own cap is
# lower by default and settable.
DEFAULT_MAX_FILE_BYTES = 512 * 1024 * 1024
TODAY_ENV = "FERRYMAN_MOCK_TODAY"


def parse_today(value: str, source: str = TODAY_ENV) -> dt.date:
    """``YYYY-MM-DD`` → a date; anything else a ValueError naming ``source``."""
    try:
        return dt.date.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"{source}: {value[:40]!r} is not a date (YYYY-MM-DD)") from None


def today_from_env() -> dt.date | None:
    value = os.environ.get(TODAY_ENV, "").strip()
    return parse_today(value) if value else None


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
    # The date the mock acts on (None: the real date, UTC); by default FERRYMAN_MOCK_TODAY's.
    today: dt.date | None = field(default_factory=today_from_env)
    # Shutdown dates announced at run time (PUT /_ferryman/shutdown_dates), over the shipped table's:
    # served on GET /v1/models and enforced, as OpenAI starts sending a date before the model goes.
    # Replaced whole, never changed in place (reset() copies the settings shallowly).
    shutdown_dates: dict[str, dt.date | None] = field(default_factory=dict)

    def current_date(self) -> dt.date:
        return self.today or dt.datetime.now(dt.UTC).date()
