"""FM601: keys in the source, reported without ever repeating them."""

from __future__ import annotations

from tests.leak_guard import assert_no_secrets
from tests.lint.helpers import codes, fake_key, only

KEY = fake_key()
AZURE = "3f9a1c7e" + "5b2d4f6a" + "8c0e2b4d" + "6f8a0c2e"  # 32 hex characters, as an Azure key


def test_a_literal_key_argument_is_reported_redacted():
    [finding] = only(f'client = OpenAI(api_key="{KEY}", timeout=5)\n', "FM601")
    assert "'sk-…'" in finding.message
    assert KEY not in finding.message and KEY[3:9] not in finding.message
    assert_no_secrets(finding.message)


def test_every_key_position():
    source = f"""
    import os, openai
    openai.api_key = "{KEY}"
    OPENAI_API_KEY = "{fake_key(body='Zx8Qw2Er4Ty6Ui8Op0As2Df4Gh6Jk8L')}"
    os.environ["OPENAI_API_KEY"] = "{fake_key(body='Mn3Bv5Cx7Za9Sd1Fg3Hj5Kl7Po9Iu1Y')}"
    headers = {{"Authorization": "Bearer {fake_key(body='Rt5Yu7Io9Pa1Sd3Fg5Hj7Kl9Zx1Cv3B')}"}}
    llm = ChatOpenAI(openai_api_key="{fake_key('fm', 'Ab12Cd34Ef56Gh78Ij90Kl12Mn34Op56')}")
    azure = AzureOpenAI(api_key="{AZURE}", timeout=5)
    """
    found = only(source, "FM601")
    assert [f.line for f in found] == [3, 4, 5, 6, 7, 8]
    assert "'Bearer sk-…'" in found[3].message and "'fm-…'" in found[4].message and "'3f9…'" in found[5].message
    for finding in found:
        assert_no_secrets(finding.message)


def test_a_key_constant_is_reported_once_at_its_literal():
    source = f'SECRET = "{KEY}"\nclient = OpenAI(api_key=SECRET)\nother = OpenAI(api_key=SECRET)\n'
    assert [f.line for f in only(source, "FM601")] == [1]


def test_placeholders_environment_and_long_words_are_not_keys():
    source = f"""
    import os
    a = OpenAI(api_key=os.environ["OPENAI_API_KEY"])
    b = OpenAI(api_key="sk-...")
    c = OpenAI(api_key="{fake_key(body='your-key-goes-here-xxxxxxxxxxxx')}")
    d = OpenAI(api_key="EMPTY")
    e = OpenAI(api_key="{fake_key(body='ferryman-mock-test-0123456789')}")
    made_up = OpenAI(api_key="{fake_key(body='ferryman-bench-0123456789')}")
    f = "sk-learn is a library name, not a key"
    g = {{"api_key": "ThisIsAVeryLongDocumentationSentenceNoDigits"}}
    """
    assert codes(source, ("FM601",)) == []
