"""FM201/FM202/FM203/FM303: what a chat or responses call sends that the API or the SDK rejects."""

from __future__ import annotations

import pytest

from ferryman import catalogue
from tests.lint.helpers import codes, only

REASONING = "o3"
PLAIN = "gpt-4o"
assert catalogue.is_reasoning(REASONING) and catalogue.is_reasoning(PLAIN) is False

# A reasoning family that accepts sampling when reasoning effort is "none" (per the catalogue).
EFFORT_NONE = next(
    m
    for m in ("gpt-5.1", "gpt-5.2", "gpt-5.4", "gpt-6-luna")
    if (f := catalogue.family(m)) and f.sampling_with_effort_none
)


def chat(args: str, model: str = REASONING) -> str:
    return f"client.chat.completions.create(model={model!r}, messages=[], {args})\n"


def test_max_tokens_on_a_reasoning_model_is_fm201_with_a_rename():
    [finding] = only(chat("max_tokens=100"), "FM201")
    assert "max_tokens is rejected by reasoning model 'o3'" in finding.message
    assert "use max_completion_tokens" in finding.message
    assert finding.edit is not None and (finding.edit.old, finding.edit.new) == ("max_tokens", "max_completion_tokens")
    assert finding.col == chat("max_tokens=100").index("max_tokens")


def test_max_tokens_on_a_non_reasoning_model_is_fine():
    assert codes(chat("max_tokens=100", PLAIN), ("FM2",)) == []


def test_an_unknown_model_gives_no_finding():
    assert codes(chat("max_tokens=100", "someone-elses-model"), ("FM2",)) == []
    assert codes("def f(client, m):\n    client.chat.completions.create(model=m, max_tokens=5)\n", ("FM2",)) == []


def test_a_model_in_a_variable_is_followed():
    source = """
    REASONER = "o3"
    def ask(client):
        local = REASONER
        return client.chat.completions.create(model=local, max_tokens=100, messages=[])
    """
    assert codes(source, ("FM2",)) == ["FM201"]


def test_parameters_from_a_dict_are_seen_but_not_rewritten():
    source = """
    PARAMS = {"model": "o3", "max_tokens": 100}
    client.chat.completions.create(messages=[], **PARAMS)
    """
    [finding] = only(source, "FM201")
    assert finding.edit is None and finding.line == 3


def test_no_rename_when_max_completion_tokens_is_already_there():
    [finding] = only(chat("max_tokens=100, max_completion_tokens=100"), "FM201")
    assert finding.edit is None


@pytest.mark.parametrize(
    "shape",
    ["client.chat.completions.with_raw_response.create", "client.beta.chat.completions.parse",
     "self._client.chat.completions.stream", "await aclient.chat.completions.create"],
)  # fmt: skip
def test_every_chat_call_shape(shape):
    source = f"async def f(self, aclient, client):\n    {shape}(model='o3', max_tokens=1, messages=[])\n"
    assert codes(source, ("FM201",)) == ["FM201"]


def test_responses_has_no_max_tokens_whatever_the_model():
    source = "client.responses.create(model='gpt-4o', input='hi', max_tokens=50)\n"
    [finding] = only(source, "FM202")
    assert "use max_output_tokens" in finding.message
    assert finding.edit is not None and finding.edit.new == "max_output_tokens"


def test_non_default_temperature_and_top_p_on_a_reasoning_model():
    found = only(chat("temperature=0.2, top_p=0.5"), "FM203")
    assert [f.message.split("=")[0] for f in found] == ["temperature", "top_p"]
    assert "rejected by reasoning model 'o3'" in found[0].message


def test_default_or_unknown_sampling_values_are_fine():
    assert codes(chat("temperature=1"), ("FM203",)) == []
    assert codes("def f(client, t):\n    " + chat("temperature=t"), ("FM203",)) == []
    assert codes(chat("temperature=0.2", PLAIN), ("FM203",)) == []


def test_sampling_with_effort_none_where_the_family_allows_it():
    assert codes(chat('temperature=0.2, reasoning_effort="none"', EFFORT_NONE), ("FM203",)) == []
    assert codes(chat('temperature=0.2, reasoning_effort="high"', EFFORT_NONE), ("FM203",)) == ["FM203"]
    responses = (
        f"client.responses.create(model={EFFORT_NONE!r}, input='x', temperature=0.3, reasoning={{'effort': 'none'}})"
    )
    assert codes(responses, ("FM203",)) == []
    unknown = f"def f(client, cfg):\n    client.responses.create(model={EFFORT_NONE!r}, temperature=0.3, reasoning=cfg)"
    assert codes(unknown, ("FM203",)) == []


def test_responses_temperature_on_a_reasoning_model():
    assert codes("client.responses.create(model='o3', input='x', temperature=0)", ("FM203",)) == ["FM203"]


def test_functions_and_function_call_are_deprecated():
    found = only(chat("functions=[{'name': 'f'}], function_call='auto'", PLAIN), "FM303")
    assert [f.message for f in found] == [
        "functions= is deprecated: use tools=",
        "function_call= is deprecated: use tool_choice=",
    ]
    assert codes("client.responses.create(model='gpt-4o', input='x', functions=[])", ("FM303",)) == []


def test_calls_that_are_not_sdk_shaped_are_not_judged():
    source = "requests.post(url, json={'model': 'o3', 'max_tokens': 5})\nmy.create(model='o3', max_tokens=5)\n"
    assert codes(source, ("FM2",)) == []


def test_an_attribute_assigned_once_is_followed_one_assigned_twice_is_not():
    source = """
    class Bot:
        def __init__(self, client):
            self.client = client
            self.model = "o3"
        def ask(self):
            return self.client.chat.completions.create(model=self.model, max_tokens=9, messages=[])
    """
    assert codes(source, ("FM201",)) == ["FM201"]
    twice = source.replace('self.model = "o3"', 'self.model = "o3"\n        self.model = "gpt-4o"')
    assert codes(twice, ("FM201",)) == []
