"""``POST /v1/embeddings``: deterministic unit vectors, floats or base64, with OpenAI's limits.

A vector is a function of the model and the input's tokens only, so the same text (or its
token array) always gets the same vector and different inputs get different ones. The
components are standard-normal quantiles picked by SHAKE-256 bytes, scaled to length 1.
SHAKE's output for ``d`` bytes is the prefix of its output for more, so a shortened vector
(``dimensions``) is the re-normalised prefix of the full one, as with OpenAI's models.

Speed matters (2048 inputs of 3072 floats): no per-component Python loop. Each byte is mapped
to the 4 little-endian bytes of its float32 value with ``bytes.translate`` (one table per
byte position, interleaved with slice assignment), so a 3072-d vector costs ~70 µs.
"""

from __future__ import annotations

import array
import base64
import hashlib
import math
import struct
import sys
from statistics import NormalDist
from typing import Any

from ferryman import pricing
from ferryman.catalogue import lookup
from ferryman.errors import OpenAIError, invalid_request
from ferryman.mock.call import Call, Endpoint, json_response
from ferryman.mock.replies import is_token_id, text_or_token_items
from ferryman.tokens import encoding_for_model

#: Default (and largest) vector sizes.
DEFAULT_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
    "text-embedding-ada-002-v2": 1536,
}
MAX_INPUT_TOKENS = 8192  # per input, all embedding models
MAX_REQUEST_TOKENS = 300_000  # summed over the inputs of one request

_QUANTILES = [NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)]  # never 0: no zero vector
_QUANTILES_F32 = struct.pack("<256f", *_QUANTILES)
_INVALID_INPUT = "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."


def _translate_f32(raw: bytes, table: bytes) -> bytearray:
    """``raw`` (one byte per component) → little-endian float32 bytes of ``table[byte]``."""
    out = bytearray(4 * len(raw))
    for k in range(4):
        out[k::4] = raw.translate(table[k::4])
    return out


def _native(data: bytes | bytearray) -> array.array[float]:
    values = array.array("f", data)
    if sys.byteorder != "little":
        values.byteswap()
    return values


def vector_bytes(seed: bytes, dimensions: int) -> bytes:
    """The unit vector for ``seed`` as little-endian float32 bytes (``dimensions`` of them)."""
    raw = hashlib.shake_256(seed).digest(dimensions)
    norm = math.hypot(*_native(_translate_f32(raw, _QUANTILES_F32)))
    scaled = struct.pack("<256f", *[q / norm for q in _QUANTILES])
    return bytes(_translate_f32(raw, scaled))


def seed_for(model: str, token_ids: list[int]) -> bytes:
    family = model.removesuffix("-v2").encode()
    return b"ferryman-embedding\x00" + family + b"\x00" + array.array("I", token_ids).tobytes()


def token_inputs(model: str, value: Any) -> list[list[int]]:
    """Every input as token ids: a string, a token array, or a list of either (spec-checked)."""
    encoding = encoding_for_model(model)
    items = text_or_token_items(value)
    if not items:
        raise invalid_request(_INVALID_INPUT)
    out: list[list[int]] = []
    top = encoding.n_vocab
    for item in items:
        if isinstance(item, str):
            if not item:
                raise invalid_request(_INVALID_INPUT)
            out.append(encoding.encode(item, disallowed_special=()))
        elif isinstance(item, list) and item and all(is_token_id(t) for t in item):
            bad = next((t for t in item if not 0 <= t < top), None)
            if bad is not None:
                raise invalid_request(
                    f"Invalid token id {bad} in 'input': token ids must be between 0 and {top - 1} for {model}.",
                    "input",
                    "invalid_value",
                )
            out.append(list(item))
        else:
            raise invalid_request(_INVALID_INPUT)
    return out


def _dimensions(model: str, requested: Any) -> int:
    full = DEFAULT_DIMENSIONS.get(model.removeprefix("ft:").split(":")[0], 1536)
    if requested is None:
        return full
    if not model.startswith("text-embedding-3"):
        raise invalid_request("This model does not support specifying dimensions.")
    if not is_token_id(requested) or not 1 <= requested <= full:
        raise invalid_request(
            f"Invalid value for 'dimensions' = {requested}. Must be between 1 and {full} for {model}.",
            "dimensions",
            "invalid_value",
        )
    return int(requested)


def _check_model(model: str) -> None:
    info = lookup(model)
    if info is None or info.mode != "embedding":
        raise OpenAIError(403, "You are not allowed to generate embeddings from this model", "invalid_request_error")


def _check_lengths(inputs: list[list[int]]) -> int:
    total = 0
    for ids in inputs:
        if len(ids) > MAX_INPUT_TOKENS:
            raise invalid_request(
                f"This model's maximum context length is {MAX_INPUT_TOKENS} tokens, however you requested "
                f"{len(ids)} tokens ({len(ids)} in your prompt; 0 for the completion). Please reduce your "
                "prompt; or completion length."
            )
        total += len(ids)
    if total > MAX_REQUEST_TOKENS:
        raise OpenAIError(
            400,
            f"Requested {total} tokens, max {MAX_REQUEST_TOKENS} tokens per request",
            "max_tokens_per_request",
            None,
            "max_tokens_per_request",
        )
    return total


async def create(call: Call) -> Any:
    body: dict[str, Any] = call.body
    model: str = body["model"]
    _check_model(model)
    dimensions = _dimensions(model, body.get("dimensions"))
    inputs = token_inputs(model, body["input"])
    prompt_tokens = _check_lengths(inputs)
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, ids in enumerate(inputs):
        packed = vector_bytes(seed_for(model, ids), dimensions)
        embedding: Any = base64.b64encode(packed).decode("ascii") if as_base64 else _native(packed).tolist()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    call.usage = usage
    call.cost_usd = pricing.cost_usd(model, {"prompt_tokens": prompt_tokens, "completion_tokens": 0})
    shown = "text-embedding-ada-002-v2" if model == "text-embedding-ada-002" else model
    return json_response({"object": "list", "data": data, "model": shown, "usage": usage})


ENDPOINTS = [
    Endpoint("POST", "/v1/embeddings", create, body="json", schema="CreateEmbeddingRequest", inference=True),
]
