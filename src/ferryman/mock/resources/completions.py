"""``POST /v1/completions`` (legacy): prompts x ``n``, echo, suffix, logprobs, stop, streams.

Only the models the catalogue marks ``completion`` (gpt-3.5-turbo-instruct, davinci-002,
babbage-002) are served; a chat model gets OpenAI's 404 pointing at ``v1/chat/completions``.
Replies come from :func:`ferryman.mock.replies.draft`, so fixtures match the prompt text.
``max_tokens`` defaults to 16, as OpenAI's does, so most unscripted replies end with
``finish_reason: "length"``. An explicit ``max_tokens: null`` means "up to the context".
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ferryman import pricing
from ferryman.catalogue import lookup
from ferryman.errors import OpenAIError, invalid_request
from ferryman.mock import generate, replies
from ferryman.mock.call import Call, Endpoint, json_response
from ferryman.mock.replies import Ask, is_token_id, text_or_token_items
from ferryman.mock.sse import EventStream
from ferryman.mock.state import new_id
from ferryman.tokens import encoding_for_model
from ferryman.tokens.requests import COMPLETIONS_DEFAULT_MAX_TOKENS

_DEFAULT_PROMPT = "<|endoftext|>"
_ALTERNATIVES = [" the", ",", ".", " and", " a", "\n", " of", " to", " in", " is"]


@dataclass
class Prompt:
    text: str
    ids: list[int]


@dataclass
class Choice:
    prompt: Prompt
    text: str
    ids: list[int]
    finish_reason: str
    rng: random.Random


def check_model(model: str) -> None:
    info = lookup(model)
    mode = info.mode if info else "chat"
    if mode == "completion":
        return
    if mode in ("chat", "responses"):
        message = (
            "This is a chat model and not supported in the v1/completions endpoint. "
            "Did you mean to use v1/chat/completions?"
        )
    else:
        message = f"This is a {mode} model and not supported in the v1/completions endpoint."
    raise OpenAIError(404, message, "invalid_request_error", "model")


def prompts_of(model: str, value: Any) -> list[Prompt]:
    """A string, list of strings, token array or list of token arrays (``None``: the default)."""
    encoding = encoding_for_model(model)
    if value is None:
        value = _DEFAULT_PROMPT
    items = text_or_token_items(value)
    if not items:
        raise invalid_request("Invalid value for 'prompt': it must not be an empty array.", "prompt", "invalid_value")
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(Prompt(item, encoding.encode(item, allowed_special={_DEFAULT_PROMPT}, disallowed_special=())))
            continue
        if not isinstance(item, list) or not all(is_token_id(t) for t in item):
            raise invalid_request(
                "Invalid value for 'prompt': expected a string, an array of strings, an array of token ids "
                "or an array of token-id arrays.",
                "prompt",
                "invalid_value",
            )
        bad = next((t for t in item if not 0 <= t < encoding.n_vocab), None)
        if bad is not None:
            raise invalid_request(
                f"Invalid token id {bad} in 'prompt': token ids must be between 0 and {encoding.n_vocab - 1}.",
                "prompt",
                "invalid_value",
            )
        out.append(Prompt(encoding.decode(item, errors="replace"), list(item)))
    return out


def _options(body: dict[str, Any], model: str) -> tuple[int, int]:
    """``(n, best_of)`` after OpenAI's checks on them and on streaming."""
    stream = body.get("stream") is True
    if body.get("stream_options") is not None and not stream:
        raise invalid_request(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options"
        )
    if body.get("suffix") is not None and model != "gpt-3.5-turbo-instruct":
        raise invalid_request(
            f"The 'suffix' parameter is not supported with {model}.", "suffix", "unsupported_parameter"
        )
    n = body.get("n") or 1
    best_of = body.get("best_of") or n
    if best_of < n:
        raise invalid_request("best_of must be greater than or equal to n.", "best_of", "invalid_value")
    if stream and best_of > 1 and best_of != n:
        raise invalid_request("Cannot stream results when best_of > n.", "best_of", "invalid_value")
    return n, best_of


def _cap(body: dict[str, Any], model: str, prompts: list[Prompt], suffix_tokens: int) -> int:
    info = lookup(model)
    context = (info.max_input_tokens if info else None) or 4096
    longest = max(len(p.ids) for p in prompts) + suffix_tokens
    requested = body.get("max_tokens", COMPLETIONS_DEFAULT_MAX_TOKENS)
    cap = max(0, context - longest) if requested is None else requested
    if longest + cap > context:
        raise invalid_request(
            f"This model's maximum context length is {context} tokens, however you requested {longest + cap} "
            f"tokens ({longest} in your prompt; {cap} for the completion). Please reduce your prompt; or "
            "completion length."
        )
    return int(cap)


def _choices(call: Call, model: str, prompts: list[Prompt], best_of: int, cap: int) -> list[Choice]:
    body: dict[str, Any] = call.body
    encoding = encoding_for_model(model)
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else [s for s in stop or [] if isinstance(s, str)]
    out = []
    for p_index, prompt in enumerate(prompts):
        for j in range(best_of):
            rng = generate.rng_for(body, salt=f"{p_index}:{j}")
            d = replies.draft(Ask(model, last_user=prompt.text, max_tokens=cap, stop=stops), call.app.fixtures, rng)
            text = d.content if d.content is not None else d.output_text()
            ids = encoding.encode(text, disallowed_special=())
            out.append(Choice(prompt, text, ids, "length" if d.finish_reason == "length" else "stop", rng))
    return out


def _token_text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def logprobs_of(
    model: str, ids: list[int], top: int, rng: random.Random, offset: int, first_unscored: bool = False
) -> dict[str, Any]:
    """OpenAI's legacy logprobs object for ``ids``; ``text_offset`` starts at ``offset``.

    With ``first_unscored`` (an echoed prompt) the first token has no logprob (``null``), as
    with OpenAI: nothing precedes it.
    """
    encoding = encoding_for_model(model)
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []
    for position, token_id in enumerate(ids):
        raw = encoding.decode_single_token_bytes(token_id)
        token = _token_text(raw)
        tokens.append(token)
        text_offset.append(offset)
        offset += len(raw.decode("utf-8", errors="ignore"))
        if first_unscored and position == 0:
            token_logprobs.append(None)
            top_logprobs.append(None)
            continue
        logprob = -round(rng.uniform(0.0, 2.5), 6)
        token_logprobs.append(logprob)
        alternatives = {token: logprob}
        for alt in _ALTERNATIVES:
            if len(alternatives) >= max(1, top):
                break
            if alt not in alternatives:
                alternatives[alt] = round(logprob - 0.5 * len(alternatives) - rng.uniform(0.0, 1.0), 6)
        top_logprobs.append(alternatives)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": text_offset,
    }


def _usage(prompts: list[Prompt], suffix_tokens: int, choices: list[Choice]) -> dict[str, int]:
    prompt_tokens = sum(len(p.ids) + suffix_tokens for p in prompts)
    completion_tokens = sum(len(c.ids) for c in choices)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _choice_body(model: str, c: Choice, index: int, echo: bool, top: int | None) -> dict[str, Any]:
    logprobs = None
    if top is not None:
        if echo:
            head = logprobs_of(model, c.prompt.ids, top, c.rng, 0, first_unscored=True)
            tail = logprobs_of(model, c.ids, top, c.rng, len(c.prompt.text))
            logprobs = {key: head[key] + tail[key] for key in head}
        else:
            logprobs = logprobs_of(model, c.ids, top, c.rng, len(c.prompt.text))
    text = c.prompt.text + c.text if echo else c.text
    return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": c.finish_reason}


async def create(call: Call) -> Any:
    body: dict[str, Any] = call.body
    model: str = body["model"]
    check_model(model)
    n, best_of = _options(body, model)
    prompts = prompts_of(model, body.get("prompt"))
    suffix = body.get("suffix")
    suffix_tokens = len(encoding_for_model(model).encode(suffix, disallowed_special=())) if suffix else 0
    cap = _cap(body, model, prompts, suffix_tokens)
    generated = _choices(call, model, prompts, best_of, cap)
    usage = _usage(prompts, suffix_tokens, generated)
    call.usage = usage
    call.cost_usd = pricing.cost_usd(model, usage)
    # best_of candidates are generated (and paid for); the first n of each prompt are returned.
    kept = [c for i, c in enumerate(generated) if i % best_of < n]
    echo = body.get("echo") is True
    top = body.get("logprobs")
    top = top if is_token_id(top) else None
    completion_id = new_id("cmpl-", 29)
    created = int(time.time())
    if body.get("stream") is True:
        include_usage = (body.get("stream_options") or {}).get("include_usage") is True
        events = _stream(completion_id, created, model, kept, echo, top, usage if include_usage else None)
        return EventStream(events, "chat", call.fault)
    choices = [_choice_body(model, c, index, echo, top) for index, c in enumerate(kept)]
    return json_response(
        {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": choices,
            "usage": usage,
        }
    )


def _pieces(ids: list[int], model: str) -> list[list[int]]:
    """Token ids grouped so each group decodes to whole characters (one stream delta each)."""
    encoding = encoding_for_model(model)
    groups: list[list[int]] = []
    pending: list[int] = []
    raw = b""
    for token_id in ids:
        pending.append(token_id)
        raw += encoding.decode_single_token_bytes(token_id)
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        groups.append(pending)
        pending, raw = [], b""
    if pending:
        groups.append(pending)
    return groups


def _stream(
    completion_id: str,
    created: int,
    model: str,
    kept: list[Choice],
    echo: bool,
    top: int | None,
    usage: dict[str, int] | None,
) -> Iterator[dict[str, Any]]:
    encoding = encoding_for_model(model)

    def chunk(index: int, text: str, logprobs: Any = None, finish: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "choices": [{"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}],
            "model": model,
        }
        if usage is not None:
            out["usage"] = None
        return out

    for index, c in enumerate(kept):
        offset = 0 if echo else len(c.prompt.text)
        if echo:
            lp = logprobs_of(model, c.prompt.ids, top, c.rng, 0, first_unscored=True) if top is not None else None
            yield chunk(index, c.prompt.text, lp)
            offset = len(c.prompt.text)
        for group in _pieces(c.ids, model):
            text = encoding.decode(group, errors="replace")
            lp = logprobs_of(model, group, top, c.rng, offset) if top is not None else None
            offset += len(text)
            yield chunk(index, text, lp)
        yield chunk(index, "", None, c.finish_reason)
    if usage is not None:
        yield {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "choices": [],
            "model": model,
            "usage": usage,
        }


ENDPOINTS = [
    Endpoint("POST", "/v1/completions", create, body="json", schema="CreateCompletionRequest", inference=True),
]
