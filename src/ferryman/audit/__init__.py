"""The audit log: append-only, redacted, hash-chained records of every call.

- :mod:`ferryman.audit.chain`: hashing, appending, verifying, pruning and exporting the chain
- :mod:`ferryman.audit.keys`: the checkpoint key and HMAC signatures over the chain's anchors
- :mod:`ferryman.audit.record`: bodies rendered and redacted, streams reassembled
- :mod:`ferryman.audit.inflight`: write-ahead rows of streams in flight (``audit_open``)
- :mod:`ferryman.audit.recovery`: rows of gateways that died become ``interrupted`` records
- :mod:`ferryman.audit.cli`: ``ferryman audit verify | prune | export``

The pipeline stage that writes the records is :mod:`ferryman.pipeline.audit`.
"""

from ferryman.audit.chain import ZERO_HASH, Chain, Problem, Report, export, record_hash
from ferryman.audit.keys import AuditKeyError, CheckpointKey, load_key

__all__ = [
    "ZERO_HASH",
    "AuditKeyError",
    "Chain",
    "CheckpointKey",
    "Problem",
    "Report",
    "export",
    "load_key",
    "record_hash",
]
