"""What the report's advice needs, on each audit record (pipeline/audit_advice.py, migration 0008):
through the official SDK against the mock, and the chain's promise that records written before
these fields existed still verify."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, insert, inspect, select, text, update

from ferryman.audit import Chain, load_key
from ferryman.audit.chain import ADDED, FIELDS, ZERO_HASH, normalise
from ferryman.audit.keys import CheckpointKey
from ferryman.exchange import Exchange
from ferryman.pipeline.audit_advice import PREFIX_STEP, PREFIX_TOKENS, Fingerprints
from ferryman.store.database import MIGRATIONS, make_engine, migrate
from ferryman.store.tables import audit, audit_checkpoints
from ferryman.tokens import count_text
from tests.gateway.processes import fresh_postgres_database
from tests.pipeline.test_audit import records, verify

MESSAGES = [{"role": "user", "content": "hi"}]
FP = 32  # hex digits of a fingerprint
# About 3,000 tokens that two prompts share before they differ.
SHARED = " ".join(f"Standing instruction {i}: answer in plain words and cite the handbook." for i in range(230))


def is_fp(value: Any) -> bool:
    return isinstance(value, str) and len(value) == FP and all(c in "0123456789abcdef" for c in value)


# -- through the SDK -------------------------------------------------------------------------------


def test_chat_records_cap_tier_source_fingerprint_and_the_replys_rate_limit_levels(ferryman_client, audit_db):
    client = ferryman_client()
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, max_completion_tokens=50, service_tier="flex"
    )
    reply = raw.parse()
    [row] = records(audit_db)
    assert row["output_cap"] == 50
    assert row["service_tier"] == reply.service_tier == "flex"
    assert row["via_batch"] is False and row["source"] == "sdk"
    assert is_fp(row["request_fp"]) and row["deterministic"] is False
    assert row["prefix_fp"] is None and row["prefix_tokens"] is None  # far below 1,024 tokens
    levels = {
        f"{which}_{kind}": int(raw.headers[f"x-ratelimit-{which}-{kind}"])
        for which in ("limit", "remaining")
        for kind in ("requests", "tokens")
    }
    assert row["ratelimit"] == levels and all(v > 0 for k, v in levels.items() if k.startswith("limit"))
    assert verify(audit_db).ok


def test_responses_embeddings_and_a_stream_each_get_their_fields(ferryman_client, audit_db):
    client = ferryman_client()
    client.responses.create(model="gpt-4o-mini", input="hello there", max_output_tokens=64, temperature=0)
    client.embeddings.create(model="text-embedding-3-small", input="a sentence")
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=20, stream=True)
    for _ in stream:
        pass
    responses, embeddings, streamed = records(audit_db)
    assert responses["endpoint"] == "/responses" and responses["output_cap"] == 64
    assert responses["deterministic"] is True and responses["service_tier"] == "default"
    assert embeddings["output_cap"] is None and embeddings["deterministic"] is True  # no output tokens
    assert streamed["output_cap"] == 20 and streamed["ttft_ms"] is not None
    for row in (responses, embeddings, streamed):
        assert is_fp(row["request_fp"]) and row["source"] == "sdk" and row["via_batch"] is False
        assert set(row["ratelimit"]) == {"limit_requests", "remaining_requests", "limit_tokens", "remaining_tokens"}
    assert len({responses["request_fp"], embeddings["request_fp"], streamed["request_fp"]}) == 3
    assert verify(audit_db).ok


def test_identical_requests_share_a_fingerprint_streamed_or_not_and_a_different_one_does_not(ferryman_client, audit_db):
    client = ferryman_client()
    ask: dict[str, Any] = {"model": "gpt-4o-mini", "messages": MESSAGES, "temperature": 0, "max_tokens": 5}
    client.chat.completions.create(**ask)
    client.chat.completions.create(**ask, user="someone", metadata={"run": "2"}, store=False)  # not the answer
    for _ in client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}):
        pass
    client.chat.completions.create(**{**ask, "temperature": 0.0})  # 0.0 is 0
    client.chat.completions.create(**{**ask, "max_tokens": 6})
    client.chat.completions.create(**{**ask, "messages": [{"role": "user", "content": "hi!"}]})
    rows = records(audit_db)
    fps = [row["request_fp"] for row in rows]
    assert len(set(fps[:4])) == 1, fps
    assert len(set(fps)) == 3
    assert all(row["deterministic"] is True for row in rows)
    assert not any(row["request_body"] and row["request_fp"] in row["request_body"] for row in rows)


def test_prompts_sharing_a_3000_token_prefix_share_the_prefix_fingerprint(ferryman_client, audit_db):
    assert count_text(SHARED, "gpt-4o-mini") > 2_900
    client = ferryman_client(audit={"bodies": "none"})  # fingerprints need no kept body
    for question in ("What is the first rule?", "Summarise the handbook."):
        system = {"role": "system", "content": SHARED}
        client.chat.completions.create(model="gpt-4o-mini", messages=[system, {"role": "user", "content": question}])
    client.responses.create(model="gpt-4o-mini", instructions=SHARED, input="Which rule is last?")
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "short " + SHARED}])
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    first, second, responses, other, short = records(audit_db)
    assert first["request_body"] is None and first["request_fp"] != second["request_fp"]
    assert is_fp(first["prefix_fp"]) and first["prefix_fp"] == second["prefix_fp"]
    for row in (first, second, responses):
        tokens = row["prefix_tokens"]
        assert tokens is not None and PREFIX_TOKENS <= tokens <= row["input_tokens"] < tokens + PREFIX_STEP
        assert (tokens - PREFIX_TOKENS) % PREFIX_STEP == 0
    assert is_fp(responses["prefix_fp"])
    assert other["prefix_fp"] not in (None, first["prefix_fp"])  # a prompt that starts otherwise
    assert short["prefix_fp"] is None and short["prefix_tokens"] is None
    assert verify(audit_db).ok


def test_fingerprints_are_keyed_by_the_audit_key_not_a_bare_hash():
    """A short prompt's bare sha256 can be found by trying likely prompts: under another key the
    same request has another fingerprint, and none is the sha256 of the body."""
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": MESSAGES})
    exchange = Exchange.build("POST", "/chat/completions", {"content-type": "application/json"}, body)
    one = Fingerprints(CheckpointKey(b"a" * 32, "test")).request(exchange)["request_fp"]
    again = Fingerprints(CheckpointKey(b"a" * 32, "test")).request(exchange)["request_fp"]
    other = Fingerprints(CheckpointKey(b"b" * 32, "test")).request(exchange)["request_fp"]
    assert one == again != other
    assert one not in hashlib.sha256(body).hexdigest()


# -- the chain: old records verify, new fields are covered ------------------------------------------


def _old_hash(prev_hash: str, record: dict[str, Any]) -> str:
    """The hash as the chain made it before migration 0008: over the fields it had then only."""
    old = {name: value for name, value in normalise(record).items() if name not in ADDED}
    return hashlib.sha256(prev_hash.encode("ascii") + orjson.dumps(old, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _at_0007(engine: Engine) -> None:
    """The schema as the last release left it, whether the database is new (SQLite) or comes
    migrated (a fresh PostgreSQL database): upgraded to 0007, then downgraded to it."""
    from alembic import command
    from alembic.config import Config

    for step in (command.upgrade, command.downgrade):
        with engine.begin() as connection:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = connection
            step(config, "0007")


@pytest.fixture(params=["sqlite", "postgresql"])
def old_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        made = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
        yield made
        made.dispose()
        return
    with fresh_postgres_database(request.getfixturevalue("postgres_url")) as url:
        made = make_engine(url)
        yield made
        made.dispose()


OLD_RECORD = {
    "seq": 1,
    "ts": 1_790_000_000.25,
    "request_id": "req_old",
    "principal": "process",
    "upstream": "mock",
    "model": "gpt-4o-mini",
    "endpoint": "/chat/completions",
    "status": 200,
    "attempts": 1,
    "latency_ms": 12.5,
    "ttft_ms": None,
    "input_tokens": 8,
    "cached_tokens": 0,
    "output_tokens": 3,
    "reasoning_tokens": 0,
    "cost_usd": "0.0000030000",
    "cache": "off",
    "tags": {"team": "a"},
    "error": None,
    "request_body": None,
    "response_body": None,
}


def test_a_chain_written_before_0008_verifies_after_it_and_new_fields_are_covered(old_engine, tmp_path, monkeypatch):
    monkeypatch.setenv("FERRYMAN_DATA_DIR", str(tmp_path / "data"))
    key = load_key(create=True)
    engine = old_engine
    _at_0007(engine)  # the schema as the last release left it: no advice columns
    digest = _old_hash(ZERO_HASH, OLD_RECORD)
    with engine.begin() as conn:
        assert "request_fp" not in {c["name"] for c in inspect(conn).get_columns("audit")}
        values = {**OLD_RECORD, "prev_hash": ZERO_HASH, "hash": digest}
        conn.execute(insert(audit).values(**values))
        checkpoint = {"ts": 1.0, "kind": "head", "seq": 1, "hash": digest, "count": 1}
        conn.execute(insert(audit_checkpoints).values(**checkpoint, signature=key.sign("head", 1, digest, 1)))
    migrate(engine)
    chain = Chain(engine, key)
    assert chain.verify().ok  # the old record's NULLs are not hashed: the same bytes, the same hash

    new = {name: value for name, value in OLD_RECORD.items() if name != "seq"}
    advice = {
        "output_cap": 50,
        "service_tier": "flex",
        "via_batch": False,
        "request_fp": "0" * FP,
        "deterministic": True,
        "prefix_fp": "1" * FP,
        "prefix_tokens": 1152,
        "ratelimit": {"limit_requests": 500, "remaining_requests": 499},
        "source": "gateway",
    }
    assert set(advice) == set(ADDED) and set(FIELDS) >= set(advice)
    appended = chain.append({**new, **advice})
    assert appended.seq == 2 and appended.hash != _old_hash(digest, {**new, "seq": 2})
    with engine.connect() as conn:
        stored = conn.execute(select(audit).where(audit.c.seq == 2)).mappings().one()
    assert {name: stored[name] for name in advice} == advice
    assert chain.verify().ok

    for seq, field, value in (
        (2, "request_fp", "2" * FP),
        (2, "via_batch", True),
        (2, "ratelimit", {"limit_requests": 500, "remaining_requests": 1}),
        (2, "source", None),  # cleared: no longer hashed, so the hash no longer matches
        (1, "source", "sdk"),  # an old record given a value it never had
    ):
        with engine.begin() as conn:
            before = conn.execute(select(audit.c[field]).where(audit.c.seq == seq)).scalar()
            conn.execute(update(audit).where(audit.c.seq == seq).values({field: value}))
        report = chain.verify()
        assert not report.ok and [p.seq for p in report.problems] == [seq], (field, report.problems)
        assert "edited" in str(report.problems[0])
        with engine.begin() as conn:
            conn.execute(update(audit).where(audit.c.seq == seq).values({field: before}))
        assert chain.verify().ok, field


@pytest.mark.parametrize(
    "raw, problem, said",
    [
        ("'yes'", "via_batch", "edited"),  # SQLite's boolean processing reads it as a bool: a changed value
        ('\'{"limit_requests": "5"}\'', "ratelimit", "ratelimit is not a JSON object of whole numbers"),
        ("'not json'", "ratelimit", "ratelimit is not valid JSON"),
        ("'many'", "output_cap", "output_cap is not a whole number"),
    ],
)
def test_a_malformed_advice_value_is_named_not_a_crash(tmp_path, monkeypatch, raw, problem, said):
    monkeypatch.setenv("FERRYMAN_DATA_DIR", str(tmp_path / "data"))
    engine = make_engine(f"sqlite:///{tmp_path / 'f.db'}")
    try:
        migrate(engine)
        chain = Chain(engine, load_key(create=True))
        chain.append({**{k: v for k, v in OLD_RECORD.items() if k != "seq"}, "via_batch": False})
        with engine.begin() as conn:
            conn.execute(text(f"UPDATE audit SET {problem} = {raw} WHERE seq = 1"))
        report = chain.verify()
        assert not report.ok and said in str(report.problems[0]) and report.problems[0].seq == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "text",
    [
        SHARED,
        "数据处理的第一条规则是保持简单。" * 400,  # more than one token a character
        "x" * 20_000,  # one long run
        "a\n\n  " * 3_000,  # whitespace runs
    ],
)
def test_the_prefix_tokens_from_a_cut_of_the_text_are_the_whole_texts_first_tokens(text):
    """Only the text's start is encoded: its first 1,024 tokens are those of the whole text."""
    from ferryman.pipeline.audit_advice import _first_tokens
    from ferryman.tokens import encoding_for_model

    encoding = encoding_for_model("gpt-4o-mini")
    whole = encoding.encode_ordinary(text)
    assert len(whole) > PREFIX_TOKENS
    assert _first_tokens(encoding, iter([text]), PREFIX_TOKENS)[:PREFIX_TOKENS] == whole[:PREFIX_TOKENS]
    split = _first_tokens(encoding, iter(["system", text[:100], text[100:]]), PREFIX_TOKENS)
    head = encoding.encode_ordinary("system") + encoding.encode_ordinary(text[:100])
    assert split[: len(head)] == head and len(split) >= PREFIX_TOKENS


def test_values_a_column_or_json_cannot_hold_are_left_out_not_a_lost_record():
    from ferryman.pipeline.audit_advice import ratelimit_levels

    exchange = Exchange.build("POST", "/chat/completions", {}, b"{}")
    huge = {
        "x-ratelimit-limit-requests": "1e30",
        "x-ratelimit-remaining-requests": "7",
        "x-ratelimit-limit-tokens": "9",
    }
    assert ratelimit_levels(exchange, huge) == {"remaining_requests": 7, "limit_tokens": 9}
    deep: Any = {"model": "gpt-4o-mini", "max_tokens": 2**63 - 1}
    node = deep
    for _ in range(300):  # parses, but is too deep to serialise again
        node["x"] = {}
        node = node["x"]
    exchange = Exchange.build("POST", "/chat/completions", {}, b"")
    exchange.json = deep
    fields = Fingerprints(CheckpointKey(b"a" * 32, "test")).fields(exchange, None, None, 0, None)
    assert fields["request_fp"] is None and fields["output_cap"] is None and fields["source"] is None
