"""FM101/FM102: model ids past or near their shutdown date, where the code uses them as models."""

from __future__ import annotations

import datetime as dt

from ferryman import catalogue
from tests.lint.helpers import codes, lint, only, shutdown

GPT4O = shutdown("gpt-4o")
SUCCESSOR = catalogue.lifecycle("gpt-4o").successor
BEFORE = GPT4O - dt.timedelta(days=41)
AFTER = GPT4O + dt.timedelta(days=3)

CALL = """
from openai import OpenAI
client = OpenAI(timeout=10)
client.chat.completions.create(model="gpt-4o", messages=[])
"""


def test_a_retiring_model_says_its_date_days_left_and_successor():
    [finding] = only(CALL, "FM102", today=BEFORE)
    assert finding.line == 4 and finding.col == CALL.splitlines()[3].index('"gpt-4o"')
    assert f"'gpt-4o' retires on {GPT4O.isoformat()} (in 41 days)" in finding.message
    assert f"successor: '{SUCCESSOR}'" in finding.message


def test_a_retired_model_is_fm101_and_says_was_retired():
    [finding] = lint(CALL, ("FM1",), today=AFTER)
    assert finding.code == "FM101"
    assert f"'gpt-4o' was retired on {GPT4O.isoformat()}" in finding.message


def test_the_window_hides_dates_further_away_unless_all():
    far = GPT4O - dt.timedelta(days=200)
    assert only(CALL, "FM102", today=far) == []
    assert only(CALL, "FM102", today=far, window=365) != []
    assert only(CALL, "FM102", today=far, window=None) != []


def test_a_module_constant_is_reported_once_at_its_literal_with_the_use():
    source = """
    import openai
    CHEAP = "gpt-4o-mini"
    client = openai.OpenAI(timeout=5)
    client.chat.completions.create(model=CHEAP, messages=[])
    client.responses.create(model=CHEAP, input="hi")
    """
    [finding] = only(source, "FM102", today=BEFORE)
    assert finding.line == 3
    assert "(the model at line 5)" in finding.message


def test_dict_constants_and_dict_literals_are_followed():
    source = """
    MODELS = {"fast": "gpt-4o-mini", "other": "not-a-model"}
    def go(client):
        client.chat.completions.create(model=MODELS["fast"], messages=[])
        body = {"model": "gpt-4.1", "messages": []}
        return body
    """
    found = only(source, "FM102", today=BEFORE)
    assert [(f.line, f.message.split("'")[1]) for f in found] == [(2, "gpt-4o-mini"), (5, "gpt-4.1")]


def test_defaults_and_model_named_variables_are_uses():
    source = """
    import os
    from pydantic import BaseModel, Field
    DEFAULT_MODEL = "gpt-4o"
    def ask(prompt, model="gpt-4.1-mini"):
        ...
    class Settings(BaseModel):
        model_name: str = Field(default="gpt-4o-mini", alias="model")
    CHAT = os.getenv("OPENAI_MODEL", "gpt-4.1")
    """
    assert [f.line for f in only(source, "FM102", today=BEFORE)] == [4, 5, 8, 9]


def test_other_libraries_model_arguments_count():
    source = """
    from langchain_openai import ChatOpenAI
    from agents import Agent
    llm = ChatOpenAI(model="gpt-4o")
    agent = Agent(name="a", model="gpt-4.1")
    info = client.models.retrieve("gpt-4o-mini")
    """
    assert len(only(source, "FM102", today=BEFORE)) == 3


def test_lists_comparisons_and_plain_strings_are_not_uses():
    source = """
    SUPPORTED = ["gpt-4o", "gpt-4o-mini"]
    def pick(model):
        if model == "gpt-4o":
            print("gpt-4o is old")
        return {"gpt-4o": 1}
    """
    assert codes(source, ("FM1",), today=AFTER) == []


def test_unknown_and_undated_models_and_unresolvable_names_are_silent():
    source = """
    def go(client, chosen):
        client.chat.completions.create(model="my-fine-model", messages=[])
        client.embeddings.create(model="text-embedding-3-small", input="x")
        client.chat.completions.create(model=chosen, messages=[])
        m = "gpt-4o"
        m = m.upper()
        client.chat.completions.create(model=m, messages=[])
    """
    assert catalogue.lifecycle("text-embedding-3-small") is None or not catalogue.lifecycle(
        "text-embedding-3-small"
    ).shutdown_date
    assert codes(source, ("FM1",), today=AFTER) == []


def test_a_fine_tuned_model_retires_with_its_base():
    source = 'client.chat.completions.create(model="ft:gpt-4o-mini-2024-07-18:acme:support:abc123", messages=[])'
    [finding] = only(source, "FM102", today=shutdown("gpt-4o-mini-2024-07-18") - dt.timedelta(days=10))
    assert "ft:gpt-4o-mini" in finding.message


def test_azure_model_is_a_deployment_name_and_is_not_judged():
    source = """
    from openai import AzureOpenAI
    client = AzureOpenAI(timeout=5)
    client.chat.completions.create(model="gpt-4o", messages=[])
    """
    assert codes(source, ("FM1",), today=AFTER) == []


def test_the_successor_is_offered_as_a_models_fix():
    [finding] = only(CALL, "FM102", today=BEFORE)
    assert finding.edit is not None and finding.edit.safety == "models"
    assert (finding.edit.kind, finding.edit.old, finding.edit.new) == ("replace", "gpt-4o", SUCCESSOR)
