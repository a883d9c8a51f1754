"""FM501 (no timeout), FM502 (retries that multiply) and FM801 (no error handling, opt-in)."""

from __future__ import annotations

import pytest

from ferryman.config import RetrySettings
from ferryman.lint.rules import enabled
from tests.lint.helpers import codes, only

PIPELINE_ATTEMPTS = RetrySettings.model_fields["max_attempts"].default


# -- FM501 -------------------------------------------------------------------------------------


def test_a_bare_client_waits_600_s_per_attempt():
    [finding] = only("from openai import OpenAI\nclient = OpenAI()\n", "FM501")
    assert finding.message == (
        "OpenAI() has no timeout: each attempt may wait 600 s, 1800 s with max_retries=2; pass timeout= (seconds)"
    )
    [no_retries] = only("import openai\nc = openai.AsyncOpenAI(max_retries=0)\n", "FM501")
    assert no_retries.message.startswith("openai.AsyncOpenAI() has no timeout: each attempt may wait 600 s;")


@pytest.mark.parametrize("ctor", ["AzureOpenAI", "AsyncAzureOpenAI", "AsyncOpenAI"])
def test_every_sdk_client_class(ctor):
    assert codes(f"from openai import {ctor}\nc = {ctor}(api_version='x')\n", ("FM501",)) == ["FM501"]


def test_timeout_none_never_times_out():
    [finding] = only("from openai import OpenAI\nc = OpenAI(timeout=None)\n", "FM501")
    assert "never times out" in finding.message


@pytest.mark.parametrize(
    "built",
    ["OpenAI(timeout=30)", "OpenAI(timeout=httpx2.Timeout(30.0))", "OpenAI(http_client=my_http)",
     "OpenAI(**settings)", "OpenAI().with_options(timeout=5)"],
)  # fmt: skip
def test_a_timeout_given_or_brought_along(built):
    assert codes(f"from openai import OpenAI\nc = {built}\n", ("FM501",)) == []


def test_ferryman_clients_and_other_libraries_classes_need_no_timeout():
    source = """
    import ferryman
    from ferryman import AsyncOpenAI
    from langchain_openai import OpenAI
    a = ferryman.OpenAI()
    b = AsyncOpenAI()
    c = OpenAI()
    """
    assert codes(source, ("FM501",)) == []


# -- FM502 -------------------------------------------------------------------------------------

TENACITY = """
from openai import OpenAI
from tenacity import retry, stop_after_attempt, stop_after_delay
client = OpenAI(timeout=10{retries})

@retry(stop={stop})
def ask(q):
    return client.chat.completions.create(model="m", messages=[])
"""


def test_tenacity_around_the_default_client():
    [finding] = only(TENACITY.format(retries="", stop="stop_after_attempt(5)"), "FM502")
    assert "up to (2+1)\u00d75 = 15 attempts per call" in finding.message
    assert "the SDK's default" in finding.message and "set max_retries=0" in finding.message


def test_explicit_max_retries_counts_and_zero_is_fine():
    [finding] = only(TENACITY.format(retries=", max_retries=4", stop="stop_after_attempt(3)"), "FM502")
    assert "(4+1)\u00d73 = 15" in finding.message
    assert only(TENACITY.format(retries=", max_retries=0", stop="stop_after_attempt(3)"), "FM502") == []


def test_combined_stops_take_the_attempt_bound():
    [finding] = only(TENACITY.format(retries="", stop="stop_after_attempt(4) | stop_after_delay(30)"), "FM502")
    assert "= 12 attempts" in finding.message


def test_retry_without_stop_is_unbounded():
    source = "from tenacity import retry\n@retry\ndef f(client):\n    client.responses.create(model='m', input='x')\n"
    [finding] = only(source, "FM502")
    assert "(2+1)\u00d7unbounded = unbounded" in finding.message and "assuming" not in finding.message


def test_backoff_max_tries():
    source = """
    import backoff, openai
    @backoff.on_exception(backoff.expo, openai.RateLimitError, max_tries=3)
    def embed(client, text):
        return client.embeddings.create(model="m", input=text)
    """
    assert "= 9 attempts" in only(source, "FM502")[0].message


def test_retry_loops():
    loop = """
    import time
    def ask(client):
        for attempt in range(4):
            try:
                return client.chat.completions.create(model="m", messages=[])
            except Exception:
                time.sleep(2 ** attempt)
    """
    assert "(2+1)\u00d74 = 12" in only(loop, "FM502")[0].message
    forever = loop.replace("for attempt in range(4):", "while True:")
    assert "unbounded" in only(forever, "FM502")[0].message
    reraises = loop.replace("time.sleep(2 ** attempt)", "raise")
    assert only(reraises, "FM502") == []


def test_a_batch_loop_is_not_a_retry_loop():
    source = """
    def run(client, items):
        for item in items:
            try:
                client.chat.completions.create(model="m", messages=item)
            except Exception as error:
                print(error)
    """
    assert codes(source, ("FM502",)) == []


def test_tenacity_retrying_loop():
    source = """
    from tenacity import Retrying, stop_after_attempt
    def ask(client):
        for attempt in Retrying(stop=stop_after_attempt(3)):
            with attempt:
                return client.chat.completions.create(model="m", messages=[])
    """
    assert "= 9 attempts" in only(source, "FM502")[0].message


def test_a_ferryman_client_counts_the_pipelines_attempts():
    source = TENACITY.format(retries="", stop="stop_after_attempt(5)").replace(
        "from openai import OpenAI", "from ferryman import OpenAI"
    )
    [finding] = only(source, "FM502")
    assert f"{PIPELINE_ATTEMPTS}\u00d75 = {PIPELINE_ATTEMPTS * 5} attempts" in finding.message
    assert "Ferryman's pipeline retries (the SDK's are off)" in finding.message


def test_clients_followed_through_self_and_with_options():
    source = """
    from openai import OpenAI
    from tenacity import retry, stop_after_attempt
    class Bot:
        def __init__(self):
            self.client = OpenAI(timeout=5, max_retries=1)
        @retry(stop=stop_after_attempt(2))
        def ask(self):
            a = self.client.chat.completions.create(model="m", messages=[])
            b = self.client.with_options(max_retries=0).chat.completions.create(model="m", messages=[])
            return a, b
    """
    [finding] = only(source, "FM502")
    assert "(1+1)\u00d72 = 4" in finding.message and finding.line == 9


# -- FM801 -------------------------------------------------------------------------------------


def test_fm801_is_opt_in():
    assert "FM801" not in enabled(None)
    assert "FM801" in enabled(None, ["FM801"])


def test_a_call_with_no_handler_in_its_function():
    source = "def ask(client):\n    return client.chat.completions.create(model='m', messages=[])\n"
    [finding] = only(source, "FM801")
    assert "chat.completions.create() in ask() has no handler" in finding.message


@pytest.mark.parametrize("caught", ["openai.RateLimitError", "APIError", "(ValueError, openai.OpenAIError)",
                                    "Exception", ""])  # fmt: skip
def test_handled(caught):
    source = f"""
    import openai
    from openai import APIError
    def ask(client):
        try:
            return client.chat.completions.create(model="m", messages=[])
        except {caught}:
            return None
    """.replace("except :", "except:")
    assert codes(source, ("FM801",)) == []


def test_a_narrow_handler_module_level_scripts_and_retry_decorators():
    narrow = "def f(c):\n    try:\n        c.responses.create(model='m', input='x')\n    except KeyError:\n        pass"
    assert codes(narrow, ("FM801",)) == ["FM801"]
    assert codes("client.responses.create(model='m', input='x')\n", ("FM801",)) == []
    decorated = "from tenacity import retry\n@retry\ndef f(c):\n    c.responses.create(model='m', input='x')\n"
    assert codes(decorated, ("FM801",)) == []


def test_the_sdks_retries_under_ferrymans_pipeline():
    source = """
    import openai, ferryman
    a = openai.OpenAI(http_client=ferryman.http_client())
    http = ferryman.async_http_client()
    b = openai.AsyncOpenAI(http_client=http, max_retries=1)
    c = openai.OpenAI(http_client=ferryman.http_client(), max_retries=0)
    d = ferryman.OpenAI()
    """
    found = only(source, "FM502")
    assert [f.line for f in found] == [3, 5]
    total = PIPELINE_ATTEMPTS * 3
    assert f"up to {PIPELINE_ATTEMPTS}\u00d7(2+1) = {total} attempts per call" in found[0].message
    assert "pass max_retries=0, or build the client with ferryman.OpenAI()" in found[0].message
    assert f"\u00d7(1+1) = {PIPELINE_ATTEMPTS * 2}" in found[1].message


def test_an_outer_retry_around_a_pipeline_client_that_kept_the_sdks_retries():
    source = TENACITY.format(retries=", http_client=ferryman.http_client()", stop="stop_after_attempt(5)")
    source = "import ferryman\n" + source
    finding = next(f for f in only(source, "FM502") if f.line > 6)
    assert f"{PIPELINE_ATTEMPTS}\u00d7(2+1)\u00d75 = {PIPELINE_ATTEMPTS * 15} attempts" in finding.message
