"""``--fix`` round trips: the rewritten code parses, keeps every comment and space, and lints clean
for the rule it fixed."""

from __future__ import annotations

import ast
import datetime as dt
import textwrap

from ferryman import catalogue
from ferryman.lint.fix import fix_file, fix_source
from tests.lint.helpers import options, shutdown

OPTIONS = options()


def fixed(source: str, *safeties: str, today: dt.date | None = None) -> tuple[str, list[str]]:
    opts = OPTIONS if today is None else options(today=today)
    done = fix_source(textwrap.dedent(source).encode(), "x.py", opts, safeties or ("safe",))
    text = done.after.decode()
    ast.parse(text)
    return text, [f.code for f in done.result.findings]


def test_rename_keeps_comments_and_formatting():
    source = textwrap.dedent("""
    from openai import OpenAI

    client = OpenAI(timeout=30)


    def ask(prompt):  # keep this comment
        return client.chat.completions.create(
            model="o3",  # the reasoning one
            messages=[{"role": "user", "content": prompt}],
            max_tokens=256,   # odd spacing kept
        )
    """)
    text, left = fixed(source)
    assert text == source.replace("max_tokens=256", "max_completion_tokens=256")
    assert "FM201" not in left


def test_responses_rename():
    text, left = fixed("client.responses.create(model='gpt-4o', input='x', max_tokens=9)\n")
    assert text == "client.responses.create(model='gpt-4o', input='x', max_output_tokens=9)\n"
    assert "FM202" not in left


STREAM = """
def f(client):
    stream = client.chat.completions.create(
        model="gpt-4o",
        messages=[],
        stream=True{tail}
    )
    for chunk in stream:
        print(chunk)
"""


def test_include_usage_in_a_multi_line_call_with_a_trailing_comma():
    text, left = fixed(STREAM.format(tail=","))
    assert '        stream=True,\n        stream_options={"include_usage": True},\n    )' in text
    assert "FM701" not in left


def test_include_usage_in_a_multi_line_call_without_a_trailing_comma():
    text, _ = fixed(STREAM.format(tail=""))
    assert '        stream=True,\n        stream_options={"include_usage": True}\n    )' in text


def test_include_usage_in_the_middle_of_one_line():
    text, _ = fixed("s = c.chat.completions.create(model='m', stream=True, messages=[])\nfor x in s:\n    pass\n")
    assert text.startswith("s = c.chat.completions.create(model='m', stream=True, "
                           "stream_options={\"include_usage\": True}, messages=[])")  # fmt: skip


def test_an_unsafe_fix_waits_for_unsafe_fixes():
    source = STREAM.format(tail=",").replace("print(chunk)", "print(chunk.choices[0].delta.content)")
    text, left = fixed(source)
    assert text == textwrap.dedent(source) and "FM701" in left
    text, left = fixed(source, "safe", "unsafe")
    assert "include_usage" in text and "FM701" not in left


def test_models_are_replaced_only_when_asked_and_keep_their_quotes():
    day = shutdown("gpt-4o") - dt.timedelta(days=30)
    successor = catalogue.lifecycle("gpt-4o").successor
    source = "MODEL = 'gpt-4o'  # pinned\nclient.chat.completions.create(model=MODEL, max_tokens=5, messages=[])\n"
    text, left = fixed(source, today=day)
    assert text == source and "FM102" in left
    text, left = fixed(source, "safe", "models", today=day)
    assert text.startswith(f"MODEL = '{successor}'  # pinned\n")
    # The next round judges the new model: a reasoning successor gets max_completion_tokens.
    assert ("max_completion_tokens=5" in text) == bool(catalogue.is_reasoning(successor))
    assert "FM102" not in left and "FM201" not in left


def test_fixing_twice_changes_nothing_more():
    once, _ = fixed(STREAM.format(tail=","))
    twice, _ = fixed(once)
    assert once == twice


def test_non_ascii_before_the_argument():
    text, _ = fixed("print('héllo wörld'); c.chat.completions.create(model='o3', max_tokens=1, messages=[])\n")
    assert "max_completion_tokens=1" in text and "héllo wörld" in text


def test_a_silenced_line_is_left_alone():
    source = "c.chat.completions.create(model='o3', max_tokens=1, messages=[])  # ferryman: noqa[FM201]\n"
    text, _ = fixed(source)
    assert text == source


def test_fix_file_writes_and_diff_shows_it(tmp_path):
    path = tmp_path / "app.py"
    path.write_text("c.chat.completions.create(model='o3', max_tokens=1, messages=[])\n")
    preview = fix_file(str(path), OPTIONS, {"safe"}, write=False)
    assert preview.changed and "+c.chat.completions.create(model='o3', max_completion_tokens=1" in preview.diff()
    assert "max_tokens=1" in path.read_text()
    done = fix_file(str(path), OPTIONS, {"safe"})
    assert done.result.fixed == 1 and "max_completion_tokens=1" in path.read_text()
