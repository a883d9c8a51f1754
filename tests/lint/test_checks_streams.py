"""FM701: chat streams without usage, and when adding it is provably harmless."""

from __future__ import annotations

from tests.lint.helpers import codes, only


def test_a_chat_stream_without_include_usage():
    [finding] = only("s = client.chat.completions.create(model='m', messages=[], stream=True)\n", "FM701")
    assert 'without stream_options={"include_usage": True}' in finding.message
    assert finding.edit is not None and finding.edit.kind == "add" and finding.edit.old == "stream"


def test_include_usage_true_or_unknown_options_are_fine():
    base = "def f(client, opts, flag):\n    client.chat.completions.create(model='m', messages=[], stream=True, {})\n"
    assert codes(base.format('stream_options={"include_usage": True}'), ("FM701",)) == []
    assert codes(base.format("stream_options=opts"), ("FM701",)) == []
    assert codes(base.format("**opts"), ("FM701",)) == []
    assert codes(base.format('stream_options={"include_usage": False}'), ("FM701",)) == ["FM701"]
    assert codes(base.format("stream=flag").replace("stream=True, ", ""), ("FM701",)) == []


def test_a_streaming_constant_the_stream_helper_and_legacy_completions():
    assert codes("STREAM = True\nclient.chat.completions.create(model='m', stream=STREAM)\n", ("FM701",)) == ["FM701"]
    assert codes("client.chat.completions.stream(model='m', messages=[])\n", ("FM701",)) == ["FM701"]
    assert codes("client.completions.create(model='m', prompt='p', stream=True)\n", ("FM701",)) == ["FM701"]


def test_responses_streams_report_usage_anyway():
    assert codes("client.responses.create(model='m', input='x', stream=True)\n", ("FM701",)) == []
    assert codes("client.responses.stream(model='m', input='x')\n", ("FM701",)) == []


def test_the_fix_is_safe_only_when_the_reader_copes_with_an_empty_choices_chunk():
    safe = """
    def f(client):
        stream = client.chat.completions.create(model="m", messages=[], stream=True)
        for chunk in stream:
            print(chunk)
    """
    indexed = safe.replace("print(chunk)", "print(chunk.choices[0].delta.content)")
    returned = "def f(client):\n    return client.chat.completions.create(model='m', messages=[], stream=True)\n"
    assert only(safe, "FM701")[0].edit.safety == "safe"
    assert only(indexed, "FM701")[0].edit.safety == "unsafe"
    assert only(returned, "FM701")[0].edit.safety == "unsafe"


def test_ferrymans_pipeline_asks_for_usage_itself():
    source = """
    import ferryman, openai
    a = ferryman.OpenAI()
    b = openai.OpenAI(http_client=ferryman.http_client(), max_retries=0)
    a.chat.completions.create(model="m", messages=[], stream=True)
    b.chat.completions.create(model="m", messages=[], stream=True)
    """
    assert codes(source, ("FM701",)) == []
