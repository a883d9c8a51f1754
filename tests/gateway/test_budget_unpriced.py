"""A key with a budget cannot spend past it on a model Ferryman cannot price: such a call is
refused before it is sent (a new model, or a name a compatible upstream serves, would otherwise
be free of the key's cap). Keys without a budget, and a model given a price, go through."""

from __future__ import annotations

import json

import openai
import pytest

MESSAGES = [{"role": "user", "content": "hi"}]
NEW_MODEL = "gpt-9-preview"  # in no price table


def chats(mock):
    return [r for r in mock.requests() if r["path"] == "/v1/chat/completions"]


def test_a_budgeted_key_is_refused_an_unpriced_model_without_a_call(gateway, ferryman_mock):
    gw = gateway()
    capped = gw.client(gw.new_key(budget="5/day"))
    with pytest.raises(openai.BadRequestError) as refused:
        capped.chat.completions.create(model=NEW_MODEL, messages=MESSAGES)
    assert refused.value.code == "model_not_priced" and refused.value.param == "model"
    assert NEW_MODEL in refused.value.message and "budget" in refused.value.message
    with pytest.raises(openai.BadRequestError):  # streamed alike
        capped.chat.completions.create(model=NEW_MODEL, messages=MESSAGES, stream=True)
    assert chats(ferryman_mock) == []
    capped.chat.completions.create(model="gpt-6-luna", messages=MESSAGES)  # a priced model: as before
    assert len(chats(ferryman_mock)) == 1


def test_a_team_budget_counts_as_the_keys_own(gateway, ferryman_mock):
    from ferryman.gateway.key_rules import parse_budget

    gw = gateway()
    gw.server.call(gw.gateway.keys.set_team("research", budget=parse_budget("5/day")))
    member = gw.client(gw.new_key(team="research"))
    with pytest.raises(openai.BadRequestError) as refused:
        member.chat.completions.create(model=NEW_MODEL, messages=MESSAGES)
    assert refused.value.code == "model_not_priced"
    assert chats(ferryman_mock) == []


def test_a_key_without_a_budget_and_a_priced_new_model_go_through(gateway, ferryman_mock, tmp_path):
    prices = tmp_path / "prices.json"
    entry = {"mode": "chat", "input_usd_per_1m": 1.0, "output_usd_per_1m": 4.0, "max_output_tokens": 1000}
    prices.write_text(json.dumps({"models": {NEW_MODEL: entry}}))
    plain = gateway()
    with pytest.raises(openai.NotFoundError):  # sent: the mock itself does not know the model
        plain.client(plain.new_key()).chat.completions.create(model=NEW_MODEL, messages=MESSAGES)
    assert len(chats(ferryman_mock)) == 1
    priced = gateway(pricing_file=str(prices))
    with pytest.raises(openai.NotFoundError):
        priced.client(priced.new_key(budget="5/day")).chat.completions.create(model=NEW_MODEL, messages=MESSAGES)
    assert len(chats(ferryman_mock)) == 2
