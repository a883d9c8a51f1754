"""FM301/FM302: the 0.x SDK and module-level configuration; FM401: APIs that shut down."""

from __future__ import annotations

import datetime as dt

from ferryman import catalogue
from tests.lint.helpers import codes, only


def test_the_0x_resources_through_every_import_form():
    source = """
    import openai
    import openai as oa
    from openai import Embedding
    openai.ChatCompletion.create(model="x", messages=[])
    oa.Completion.create(model="x", prompt="p")
    Embedding.create(model="x", input="y")
    """
    found = only(source, "FM301")
    assert [f.line for f in found] == [5, 6, 7]
    assert "use client.chat.completions.create" in found[0].message
    assert found[1].message.startswith("openai.Completion.create is the 0.x SDK (removed in 1.0)")


def test_openai_error_imports_and_handlers():
    source = """
    import openai
    from openai.error import RateLimitError
    try:
        pass
    except (openai.error.APIError, ValueError):
        pass
    """
    found = only(source, "FM301")
    assert [f.line for f in found] == [3, 6]
    assert "catch openai.APIError" in found[1].message


def test_same_names_from_elsewhere_and_the_1x_sdk_are_fine():
    source = """
    from mylib import ChatCompletion
    from openai import OpenAI
    ChatCompletion.create(model="x")
    OpenAI(timeout=1).chat.completions.create(model="x", messages=[])
    try:
        pass
    except openai.RateLimitError:
        pass
    """
    assert codes(source, ("FM3",)) == []


def test_module_settings():
    source = """
    import openai
    openai.api_key = get_key()
    openai.api_base = "http://localhost:8000/v1"
    openai.something_else = 1
    """
    found = only(source, "FM302")
    assert [f.line for f in found] == [3, 4]
    assert "process-wide module client" in found[0].message and "OpenAI(api_key=...)" in found[0].message
    assert "openai.api_base was removed in 1.0: pass base_url" in found[1].message


def test_the_sdks_own_source_is_not_judged_for_what_it_implements():
    source = "import openai as _sdk\n_sdk.api_type = 'azure'\n_sdk.ChatCompletion.create()\n"
    assert sorted(codes(source, ("FM3",))) == ["FM301", "FM302"]
    assert codes(source, ("FM3",), sdk_source=True) == []


ASSISTANTS = catalogue.api_retirement("POST", "/v1/assistants")
assert ASSISTANTS is not None


def test_the_assistants_api_with_its_date_from_the_catalogue():
    source = """
    from openai import OpenAI
    client = OpenAI(timeout=5)
    client.beta.assistants.create(model="x")
    client.beta.threads.runs.create_and_poll(thread_id="t", assistant_id="a")
    client.chat.completions.create(model="x", messages=[])
    """
    after = ASSISTANTS.shutdown_date + dt.timedelta(days=1)
    found = only(source, "FM401", today=after)
    assert [f.line for f in found] == [4, 5]
    assert found[0].message.startswith(f"Assistants API: shut down on {ASSISTANTS.shutdown_date.isoformat()}")
    assert "(threads.runs.create_and_poll)" in found[1].message
    before = ASSISTANTS.shutdown_date - dt.timedelta(days=10)
    assert "shutting down on" in only(source, "FM401", today=before)[0].message
    assert "(in 10 days)" in only(source, "FM401", today=before)[0].message
    assert only(source, "FM401", today=ASSISTANTS.shutdown_date - dt.timedelta(days=400)) == []


def test_common_resource_names_need_an_openai_client():
    videos = catalogue.api_retirement("POST", "/v1/videos")
    assert videos is not None
    day = videos.shutdown_date + dt.timedelta(days=1)
    sdk = "from openai import OpenAI\nclient = OpenAI(timeout=5)\nclient.videos.create(model='sora-2')\n"
    assert codes(sdk, ("FM401",), today=day) == ["FM401"]
    youtube = "from googleapiclient import discovery\nclient = discovery.build()\nclient.videos.list(part='id')\n"
    assert codes(youtube, ("FM401",), today=day) == []


def test_only_the_retiring_method_of_a_path():
    jobs = catalogue.api_retirement("POST", "/v1/fine_tuning/jobs")
    assert jobs is not None and catalogue.api_retirement("GET", "/v1/fine_tuning/jobs") is None
    day = jobs.shutdown_date + dt.timedelta(days=1)
    source = "client.fine_tuning.jobs.create(model='m', training_file='f')\nclient.fine_tuning.jobs.list()\n"
    assert [f.line for f in only(source, "FM401", today=day)] == [1]
