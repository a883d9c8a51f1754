"""Isolation for every id a request can name, and budgets the caller cannot choose.

Two keys on one gateway, the official SDK and raw HTTP: a fine-tuned model is its maker's (not
listed, usable or deletable by another key); ids inside bodies (``conversation``, a file
search tool's ``vector_store_ids``, a code interpreter's ``container``, a top-level ``file_id``,
a batch file's lines) are checked like ids in paths; tag budgets follow the tags a key and its
team carry (set by the admin), never the caller's ``ferryman-tags`` header.
"""

from __future__ import annotations

import io
import itertools
import json
from decimal import Decimal
from typing import Any

import httpx2
import openai
import pytest

from ferryman.pipeline.budget import Budget
from tests.gateway.test_isolation import FT_MODEL, not_found, training_data, upload, upstream_calls, wait_for

MESSAGES = [{"role": "user", "content": "Say hello."}]


def _key_id(gw: Any, secret: str) -> str:
    found = gw.server.call(gw.gateway.key_cache.lookup(secret))
    return found[0].id


def test_a_fine_tuned_model_belongs_to_the_key_that_trained_it(gateway, ferryman_mock):
    """Bob does not see Alice's model in GET /v1/models (nor its suffix), cannot retrieve, use or
    delete it (404 model_not_found, as for a model that does not exist); Alice can."""
    gw = gateway()
    alice, bob = gw.client(gw.new_key("alice")), gw.client(gw.new_key("bob"))
    ferryman_mock.settings(finetune_seconds=0.3)
    training = upload(alice, training_data(), "fine-tune")
    job = alice.fine_tuning.jobs.create(model=FT_MODEL, training_file=training.id, suffix="secretproj")
    done = wait_for(lambda: alice.fine_tuning.jobs.retrieve(job.id), lambda j: j.status in ("succeeded", "failed"))
    model = done.fine_tuned_model
    assert done.status == "succeeded" and model and "secretproj" in model

    listed = [m.id for m in bob.models.list()]
    assert model not in listed and not any("secretproj" in m for m in listed)
    assert "gpt-4o-mini" in listed  # base models are everyone's
    assert model in [m.id for m in alice.models.list()]
    before = len(upstream_calls(ferryman_mock, model))
    refused = not_found(lambda: bob.models.retrieve(model))
    assert refused.code == "model_not_found" and refused.param == "model"
    used = not_found(lambda: bob.chat.completions.create(model=model, messages=MESSAGES, max_tokens=5))
    assert used.code == "model_not_found"
    not_found(lambda: bob.responses.create(model=model, input="hi"))
    not_found(lambda: bob.models.delete(model))
    bobs_file = upload(bob, training_data(), "fine-tune")
    stolen = not_found(lambda: bob.fine_tuning.jobs.create(model=model, training_file=bobs_file.id))
    assert stolen.param == "model"
    batch_line = {"custom_id": "r", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"model": model, "messages": MESSAGES}}  # fmt: skip
    not_found(lambda: upload(bob, json.dumps(batch_line).encode(), "batch"))
    assert upstream_calls(ferryman_mock, model)[before:] == []  # nothing of Bob's reached the upstream

    assert alice.chat.completions.create(model=model, messages=MESSAGES, max_tokens=5).choices
    assert alice.models.delete(model).deleted


@pytest.mark.parametrize(
    ("where", "body", "param"),
    [
        ("conversation", {"model": "gpt-4o-mini", "input": "hi", "conversation": "conv_alice"}, "conversation"),
        ("conversation object", {"model": "gpt-4o-mini", "input": "hi", "conversation": {"id": "conv_alice"}},
         "conversation"),
        ("file search", {"model": "gpt-4o-mini", "input": "hi",
                         "tools": [{"type": "file_search", "vector_store_ids": ["vs_alice"]}]}, "vector_store_ids"),
        ("code interpreter", {"model": "gpt-4o-mini", "input": "hi",
                              "tools": [{"type": "code_interpreter", "container": "cntr_alice"}]}, "container"),
        ("container files", {"model": "gpt-4o-mini", "input": "hi", "tools": [
            {"type": "code_interpreter", "container": {"type": "auto", "file_ids": ["file-alice"]}}]}, "file_ids"),
        ("input file", {"model": "gpt-4o-mini", "input": [{"role": "user", "content": [
            {"type": "input_file", "file_id": "file-alice"}]}]}, "file_id"),
    ],
)  # fmt: skip
def test_ids_inside_a_body_are_checked_like_ids_in_a_path(gateway, ferryman_mock, where, body, param):
    """Bob naming Alice's conversation, vector store, container or file anywhere in a body gets the
    404 of an object that does not exist, naming the field; Alice's own request goes through."""
    gw = gateway()
    alice_key, bob_key = gw.new_key("alice"), gw.new_key("bob")
    owned = [("conv_alice", "conversation"), ("vs_alice", "vector_store"), ("cntr_alice", "container"),
             ("file-alice", "file")]  # fmt: skip
    gw.server.call(gw.gateway.ownership.record(owned, _key_id(gw, alice_key)))
    ferryman_mock.clear_requests()
    refused = httpx2.post(gw.base_url + "/responses", json=body, headers={"authorization": f"Bearer {bob_key}"})
    assert refused.status_code == 404, refused.text
    assert refused.json()["error"]["param"] == param
    assert ferryman_mock.requests() == []
    httpx2.post(gw.base_url + "/responses", json=body, headers={"authorization": f"Bearer {alice_key}"})
    assert len(ferryman_mock.requests()) == 1  # Alice's own reached the upstream (whatever the mock makes of it)


def test_a_top_level_file_id_is_checked(gateway, ferryman_mock):
    """`file_id` at the top of a body (attaching a file to a vector store) must be the caller's."""
    gw = gateway()
    alice, bob_key = gw.client(gw.new_key("alice")), gw.new_key("bob")
    file = upload(alice, b"alice's notes", "assistants", "notes.txt")
    bob_id = _key_id(gw, bob_key)
    gw.server.call(gw.gateway.ownership.record([("vs_bob", "vector_store")], bob_id))
    refused = httpx2.post(gw.base_url + "/vector_stores/vs_bob/files", json={"file_id": file.id},
                          headers={"authorization": f"Bearer {bob_key}"})  # fmt: skip
    assert refused.status_code == 404 and refused.json()["error"]["param"] == "file_id"


def _team_spend(gw: Any, team: str) -> Decimal:
    budget = gw.gateway.pipeline.stage(Budget)
    spent, reserved = gw.server.call(budget.snapshot(f"tag:team={team}"))
    return Decimal(spent) + Decimal(reserved)


def test_tag_budgets_follow_the_keys_team_not_the_callers_header(gateway, ferryman_mock):
    """A rule on `tag:team=teama` counts the calls of team teamA's keys only: Bob (another team)
    cannot charge it by sending `ferryman-tags: team=teamA`, and Alice (of teamA) cannot escape it
    by omitting the tag, changing its case or repeating it."""
    gw = gateway(budgets=[{"scope": "tag:team=teama", "period": "day", "usd": "5"}])
    alice = gw.client(gw.new_key("alice", team="teamA"))
    bob = gw.client(gw.new_key("bob", team="teamB"))

    def spend() -> Decimal:
        return _team_spend(gw, "teama")

    for header in ("team=teamA", "TEAM=TeamA", "team=teamA,team=zz"):
        bob.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5,
                                    extra_headers={"ferryman-tags": header})  # fmt: skip
    assert spend() == 0
    charged = [spend()]
    for header in (None, "team=zz", "Team=ZZ", "team=zz,team=teamA"):
        extra = {"ferryman-tags": header} if header else {}
        alice.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5, extra_headers=extra)
        charged.append(spend())
    assert all(later > earlier for earlier, later in itertools.pairwise(charged))


def _tag_spend(gw: Any, scope: str) -> Decimal:
    budget = gw.gateway.pipeline.stage(Budget)
    spent, reserved = gw.server.call(budget.snapshot(scope))
    return Decimal(spent) + Decimal(reserved)


def test_a_key_bills_to_its_own_tags_and_its_teams(gateway, ferryman_mock):
    """A rule on `tag:project=apollo` counts the calls of keys that carry project=apollo (their
    own tag or their team's), whatever the caller's header says; a team's tag wins over its key's."""
    gw = gateway(budgets=[{"scope": "tag:project=apollo", "period": "day", "usd": "5"},
                          {"scope": "tag:project=zeus", "period": "day", "usd": "5"}])  # fmt: skip
    gw.server.call(gw.gateway.keys.set_team("apollo-team", tags={"project": "apollo"}))
    alice = gw.client(gw.new_key("alice", tags={"project": "Apollo"}))
    carol = gw.client(gw.new_key("carol", team="apollo-team", tags={"project": "zeus"}))  # the team's tag wins
    bob = gw.client(gw.new_key("bob"))

    def spend(project: str = "apollo") -> Decimal:
        return _tag_spend(gw, f"tag:project={project}")

    for header in ("project=apollo", "PROJECT=Apollo", "project=apollo,project=zz", "team=apollo-team"):
        bob.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5,
                                    extra_headers={"ferryman-tags": header})  # fmt: skip
    assert spend() == 0
    charged = [spend()]
    for client, header in ((alice, None), (alice, "project=zz"), (alice, "Project=zeus,project=apollo"),
                           (carol, None), (carol, "project=zeus")):  # fmt: skip
        extra = {"ferryman-tags": header} if header else {}
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5, extra_headers=extra)
        charged.append(spend())
    assert all(later > earlier for earlier, later in itertools.pairwise(charged))
    assert spend("zeus") == 0  # neither Carol's own tag nor anyone's header reached zeus


def test_a_tag_budget_cannot_be_escaped_once_spent(gateway, ferryman_mock):
    """Alice's key carries project=apollo; once the project's budget is spent she is refused
    (429 budget_exceeded) however she spells her header, and nothing more reaches the upstream."""
    gw = gateway(budgets=[{"scope": "tag:project=apollo", "period": "day", "usd": "0.00002"}])
    alice = gw.client(gw.new_key("alice", tags={"project": "apollo"}))
    for _ in range(50):
        try:
            alice.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5)
        except openai.RateLimitError as error:
            assert error.code == "budget_exceeded"
            break
    else:
        pytest.fail("the project's budget never ran out")
    ferryman_mock.clear_requests()
    for header in ("project=zz", "PROJECT=other", "project=,project=zz", "team=x", "a=b"):
        with pytest.raises(openai.RateLimitError) as caught:
            alice.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5,
                                          extra_headers={"ferryman-tags": header})  # fmt: skip
        assert caught.value.code == "budget_exceeded", header
    assert ferryman_mock.requests() == []


def test_a_batch_file_cannot_hide_another_keys_model(gateway):
    """A batch input naming Alice's fine-tuned model in a line is refused for Bob at upload."""
    gw = gateway()
    alice_key, bob = gw.new_key("alice"), gw.client(gw.new_key("bob"))
    gw.server.call(gw.gateway.ownership.record([("ft:gpt-4o-mini:org:x:1", "model")], _key_id(gw, alice_key)))
    line = {"custom_id": "r", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "ft:gpt-4o-mini:org:x:1", "messages": MESSAGES}}  # fmt: skip
    with pytest.raises(openai.NotFoundError):
        bob.files.create(file=("b.jsonl", io.BytesIO(json.dumps(line).encode())), purpose="batch")
