"""The audit log: append-only, redacted, hash-chained records of every call (being written)."""
