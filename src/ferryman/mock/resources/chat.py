"""``POST /v1/chat/completions``: plain and streamed, tools, structured outputs, usage."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from ferryman import pricing
from ferryman.catalogue import lookup
from ferryman.errors import OpenAIError, invalid_request
from ferryman.mock import generate, replies
from ferryman.mock.call import Call, Endpoint, json_response
from ferryman.mock.replies import Ask, Draft, Function, pieces
from ferryman.mock.sse import EventStream
from ferryman.mock.state import new_id
from ferryman.tokens import count_chat_messages, count_text, get_encoding
from ferryman.tokens import encoding_name_for_model as _encoding_name

FINGERPRINT = "fp_ferryman"


def ask_from(body: dict[str, Any], model: str) -> Ask:
    messages = body.get("messages") or []
    last_user = ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            last_user = replies.text_of(message.get("content"))
            break
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    functions = [
        Function(t["function"]["name"], t["function"].get("parameters") or {"type": "object"})
        for t in body.get("tools") or []
        if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)
    ]
    choice = body.get("tool_choice", "auto")
    if isinstance(choice, dict):
        choice = (choice.get("function") or {}).get("name", "required")
    fmt = body.get("response_format") or {}
    json_mode, json_schema = None, None
    if fmt.get("type") == "json_object":
        json_mode = "object"
    elif fmt.get("type") == "json_schema":
        json_mode, json_schema = "schema", (fmt.get("json_schema") or {}).get("schema") or {}
    cap = body.get("max_completion_tokens", body.get("max_tokens"))
    stop = body.get("stop")
    return Ask(
        model=model,
        last_user=last_user,
        after_tool_result=last.get("role") in ("tool", "function"),
        functions=functions,
        tool_choice=choice,
        parallel_tool_calls=body.get("parallel_tool_calls", True) is not False,
        json_mode=json_mode,
        json_schema=json_schema,
        max_tokens=cap if isinstance(cap, int) else None,
        stop=[stop] if isinstance(stop, str) else [s for s in stop or [] if isinstance(s, str)],
    )


def check_endpoint_fits(model: str, endpoint: str) -> None:
    info = lookup(model)
    mode = info.mode if info else "chat"
    if mode in ("embedding", "moderation", "completion") and endpoint == "chat":
        raise OpenAIError(
            404,
            "This is not a chat model and thus not supported in the v1/chat/completions endpoint.",
            "invalid_request_error",
            "model",
            "model_not_supported",
        )
    if mode == "responses" and endpoint == "chat":
        raise invalid_request(
            "This model is only supported in v1/responses and not in v1/chat/completions.",
            "model",
            "unsupported_model",
        )


def check_context(model: str, prompt_tokens: int, cap: int | None, param: str = "messages") -> None:
    info = lookup(model)
    limit = info.max_input_tokens if info else None
    if limit and prompt_tokens > limit:
        raise invalid_request(
            f"This model's maximum context length is {limit} tokens. However, your messages "
            f"resulted in {prompt_tokens} tokens. Please reduce the length of the messages.",
            param,
            "context_length_exceeded",
        )
    max_out = info.max_output_tokens if info else None
    if cap is not None and max_out and cap > max_out:
        raise invalid_request(
            f"max_tokens is too large: {cap}. This model supports at most {max_out} completion "
            "tokens, whereas you provided {cap}.".replace("{cap}", str(cap)),
            "max_tokens",
            "invalid_value",
        )


def service_tier(body: dict[str, Any]) -> str:
    """The tier a reply reports: flex and priority as asked (``fast`` reports as priority)."""
    asked = body.get("service_tier")
    if asked == "fast":
        return "priority"
    return asked if asked in ("flex", "priority") else "default"


def _message(d: Draft) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": d.content,
        "refusal": d.refusal,
        "annotations": [],
    }
    if d.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in d.tool_calls
        ]
    return message


def _logprobs(text: str, model: str, top: int) -> dict[str, Any]:
    encoding = get_encoding(_encoding_name(model))
    content = []
    for token_id in encoding.encode(text, disallowed_special=()):
        raw = encoding.decode_single_token_bytes(token_id)
        token = raw.decode("utf-8", errors="replace")
        entry = {"token": token, "logprob": -0.01, "bytes": list(raw), "top_logprobs": []}
        entry["top_logprobs"] = [{"token": token, "logprob": -0.01, "bytes": list(raw)}][: max(0, top)]
        content.append(entry)
    return {"content": content, "refusal": None}


def usage_of(model: str, prompt_tokens: int, drafts: list[Draft], reasoning_each: int) -> dict[str, Any]:
    completion = sum(count_text(d.output_text(), model) for d in drafts)
    reasoning = reasoning_each * len(drafts)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion + reasoning,
        "total_tokens": prompt_tokens + completion + reasoning,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


async def create(call: Call) -> Any:
    body: dict[str, Any] = call.body
    model: str = body["model"]
    check_endpoint_fits(model, "chat")
    tools = body.get("tools")
    prompt_tokens = call.prompt_tokens
    if prompt_tokens is None:
        prompt_tokens = count_chat_messages(body["messages"], model, tools=tools, tool_choice=body.get("tool_choice"))
    ask = ask_from(body, model)
    check_context(model, prompt_tokens, ask.max_tokens)
    # Reasoning tokens count inside the output cap, as OpenAI counts them: what is left is for text.
    reasoning = replies.reasoning_tokens(model, body.get("reasoning_effort"))
    if ask.max_tokens is not None:
        reasoning = min(reasoning, ask.max_tokens)
        ask.max_tokens -= reasoning
    n = body.get("n") or 1
    drafts = [replies.draft(ask, call.app.fixtures, generate.rng_for(body, salt=str(i))) for i in range(n)]
    usage = usage_of(model, prompt_tokens, drafts, reasoning)
    usage["prompt_tokens_details"]["cached_tokens"] = call.app.prompt_cache.cached_tokens(
        call.key, model, body["messages"], prompt_tokens
    )
    call.usage = usage
    call.cost_usd = pricing.cost_usd(model, usage)
    completion_id = new_id("chatcmpl-", 29)
    created = int(time.time())
    top = body.get("top_logprobs") or 0
    if body.get("stream"):
        options = body.get("stream_options") or {}
        return EventStream(
            _chunks(
                completion_id,
                created,
                model,
                drafts,
                usage,
                options.get("include_usage") is True,
                body.get("logprobs") is True,
                top,
                service_tier(body),
            ),
            "chat",
            call.fault,
        )
    choices = []
    for index, d in enumerate(drafts):
        choices.append(
            {
                "index": index,
                "message": _message(d),
                "logprobs": _logprobs(d.content or "", model, top) if body.get("logprobs") and d.content else None,
                "finish_reason": d.finish_reason,
            }
        )
    return json_response(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": choices,
            "usage": usage,
            "service_tier": service_tier(body),
            "system_fingerprint": FINGERPRINT,
        }
    )


def _chunks(
    completion_id: str,
    created: int,
    model: str,
    drafts: list[Draft],
    usage: dict[str, Any],
    include_usage: bool,
    logprobs: bool,
    top: int,
    tier: str,
) -> Iterator[dict[str, Any]]:
    def chunk(index: int, delta: dict[str, Any], finish: str | None = None, lp: Any = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "service_tier": tier,
            "choices": [{"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}],
        }
        if include_usage:
            out["usage"] = None
        return out

    for index, d in enumerate(drafts):
        yield chunk(index, {"role": "assistant", "content": "" if not d.tool_calls else None, "refusal": None})
        if d.tool_calls:
            for position, tc in enumerate(d.tool_calls):
                head = {
                    "index": position,
                    "id": tc.id,
                    "type": "function",
                    "function": {"name": tc.name, "arguments": ""},
                }
                yield chunk(index, {"tool_calls": [head]})
                for piece in pieces(tc.arguments, model):
                    yield chunk(index, {"tool_calls": [{"index": position, "function": {"arguments": piece}}]})
        elif d.refusal is not None:
            for piece in pieces(d.refusal, model):
                yield chunk(index, {"refusal": piece})
        else:
            for piece in pieces(d.content or "", model):
                lp = _logprobs(piece, model, top) if logprobs else None
                yield chunk(index, {"content": piece}, None, lp)
        yield chunk(index, {}, d.finish_reason)
    if include_usage:
        yield {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "service_tier": tier,
            "choices": [],
            "usage": usage,
        }


ENDPOINTS = [
    Endpoint("POST", "/v1/chat/completions", create, body="json", schema="CreateChatCompletionRequest", inference=True),
]
