"""One ``POST /v1/responses`` worked out: what the model says, its output items, usage and
the Response object, before anything is sent or stored."""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from ferryman.catalogue import lookup
from ferryman.errors import OpenAIError, invalid_request
from ferryman.mock import generate, replies
from ferryman.mock.fixtures import Fixtures
from ferryman.mock.prompt_cache import PromptCache
from ferryman.mock.replies import Ask, Draft, Function
from ferryman.mock.resources.responses.items import history, last_user_text, new_id, to_items
from ferryman.mock.state import ObjectStore
from ferryman.tokens import (
    count_request_prompt_tokens,
    count_responses_input,
    count_text,
    encoding_name_for_model,
    get_encoding,
)
from ferryman.tokens.chat import REPLY_PRIMING

KIND = "responses"
_WRONG_MODES = ("embedding", "moderation", "completion")


@dataclass
class Turn:
    """Everything decided about one create request."""

    response: dict[str, Any]  # the finished Response object
    input_items: list[dict[str, Any]]
    usage: dict[str, Any]
    include: set[str] = field(default_factory=set)


def check_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_request("Missing required parameter: 'model'.", "model", "missing_required_parameter")
    info = lookup(model)
    if info is not None and info.mode in _WRONG_MODES:
        raise invalid_request(
            f"The model `{model}` is not supported with the Responses API.", "model", "unsupported_model"
        )
    return model


def _functions(tools: Any) -> list[Function]:
    return [
        Function(t["name"], t.get("parameters") or {"type": "object", "properties": {}})
        for t in tools or []
        if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("name"), str)
    ]


def _tool_choice(choice: Any, functions: list[Function]) -> tuple[Any, list[Function]]:
    """``tool_choice`` as :class:`Ask` takes it, and the functions it leaves callable."""
    if isinstance(choice, str):
        return choice, functions
    if not isinstance(choice, dict):
        return "auto", functions
    if choice.get("type") == "function":
        return choice.get("name", "required"), functions
    if choice.get("type") == "allowed_tools":
        names = {t.get("name") for t in choice.get("tools") or [] if isinstance(t, dict)}
        return choice.get("mode", "auto"), [f for f in functions if f.name in names]
    return "none", functions  # a hosted tool is forced: no function call


def _json_mode(body: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    fmt = (body.get("text") or {}).get("format") or {}
    if fmt.get("type") == "json_object":
        return "object", None
    if fmt.get("type") == "json_schema":
        return "schema", fmt.get("schema") or {}
    return None, None


def is_reasoning_model(model: str) -> bool:
    return replies.reasoning_tokens(model, "high") > 0


def _reasoning_echo(body: dict[str, Any], model: str) -> dict[str, Any]:
    asked = body.get("reasoning") or {}
    if not is_reasoning_model(model):
        return {"effort": None, "summary": None}
    return {"effort": asked.get("effort") or "medium", "summary": asked.get("summary")}


def _tools_echo(tools: Any) -> list[Any]:
    out = []
    for tool in tools or []:
        if isinstance(tool, dict) and tool.get("type") == "function":
            out.append(
                {
                    "type": "function",
                    "name": tool.get("name"),
                    "description": tool.get("description"),
                    "parameters": tool.get("parameters"),
                    "strict": tool.get("strict") if tool.get("strict") is not None else True,
                }
            )
        else:
            out.append(tool)
    return out


def service_tier(asked: Any) -> str:
    if asked in ("flex", "priority", "scale", "ultrafast"):
        return str(asked)
    return "priority" if asked == "fast" else "default"


def base_object(body: dict[str, Any], model: str, response_id: str, status: str) -> dict[str, Any]:
    """A Response object as it looks before any output: every field the API sends."""
    text = body.get("text") or {}
    obj: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "background": body.get("background") is True,
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "model": model,
        "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": _reasoning_echo(body, model),
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": service_tier(body.get("service_tier")),
        "store": body.get("store") is not False,
        "temperature": body.get("temperature") if body.get("temperature") is not None else 1.0,
        "text": {"format": text.get("format") or {"type": "text"}, "verbosity": text.get("verbosity") or "medium"},
        "tool_choice": body.get("tool_choice") if body.get("tool_choice") is not None else "auto",
        "tools": _tools_echo(body.get("tools")),
        "top_logprobs": body.get("top_logprobs") or 0,
        "top_p": body.get("top_p") if body.get("top_p") is not None else 1.0,
        "truncation": body.get("truncation") or "disabled",
        "metadata": body.get("metadata") or {},
    }
    if isinstance(body.get("user"), str):  # the API sends null; the spec allows only a string
        obj["user"] = body["user"]
    return obj


def _logprobs(text: str, model: str, top: int) -> list[dict[str, Any]]:
    encoding = get_encoding(encoding_name_for_model(model))
    out = []
    for token_id in encoding.encode(text, disallowed_special=()):
        raw = encoding.decode_single_token_bytes(token_id)
        token = raw.decode("utf-8", errors="replace")
        alternatives = [{"token": token, "logprob": -0.01, "bytes": list(raw)}][: max(0, top)]
        out.append({"token": token, "logprob": -0.01, "bytes": list(raw), "top_logprobs": alternatives})
    return out


def _output(
    d: Draft, reasoning: int, summary: bool, include: set[str], model: str, top: int, rng: Any
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if reasoning > 0:
        item: dict[str, Any] = {"id": new_id("rs_"), "type": "reasoning", "summary": []}
        if summary:
            item["summary"] = [{"type": "summary_text", "text": generate.text(rng, 8, 24)}]
        if "reasoning.encrypted_content" in include:
            item["encrypted_content"] = "gAAAAA" + base64.urlsafe_b64encode(secrets.token_bytes(96)).decode()
        items.append(item)
    for tc in d.tool_calls:
        items.append(
            {
                "id": new_id("fc_"),
                "type": "function_call",
                "status": "completed",
                "arguments": tc.arguments,
                "call_id": tc.id,
                "name": tc.name,
            }
        )
    if d.tool_calls:
        return items
    status = "incomplete" if d.finish_reason == "length" else "completed"
    if d.refusal is not None:
        part: dict[str, Any] = {"type": "refusal", "refusal": d.refusal}
    else:
        if not d.content and status == "incomplete":
            return items  # the whole budget went on reasoning: no message at all
        logprobs = _logprobs(d.content or "", model, top) if "message.output_text.logprobs" in include else []
        part = {"type": "output_text", "text": d.content or "", "annotations": [], "logprobs": logprobs}
    items.append({"id": new_id("msg_"), "type": "message", "status": status, "role": "assistant", "content": [part]})
    return items


def _check_context(model: str, tokens: int, truncation: Any) -> None:
    info = lookup(model)
    limit = info.max_input_tokens if info else None
    if limit and tokens > limit and truncation != "auto":
        raise invalid_request(
            "Your input exceeds the context window of this model. Please adjust your input and try again.",
            "input",
            "context_length_exceeded",
        )


def _strip_ids(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in item.items() if k not in ("id", "status")} for item in items]


def plan(body: dict[str, Any], store: ObjectStore, fixtures: Fixtures, cache: PromptCache, key: str) -> Turn:
    """Decide the whole reply to a create request (raises OpenAI errors for bad ones)."""
    model = check_model(body)
    previous = body.get("previous_response_id")
    if previous is not None and store.get(KIND, previous) is None:
        raise OpenAIError(
            400,
            f"Previous response with id '{previous}' not found.",
            "invalid_request_error",
            "previous_response_id",
            "previous_response_not_found",
        )
    if body.get("conversation") is not None:
        conversation = body["conversation"]
        cid = conversation.get("id") if isinstance(conversation, dict) else conversation
        raise OpenAIError(404, f"Conversation with id '{cid}' not found.", "invalid_request_error", "conversation")
    if body.get("background") is True and body.get("store") is False:
        raise invalid_request("Background mode requires 'store' to be true.", "background")
    earlier = history(store, previous)
    items = to_items(body.get("input"), store)
    input_tokens = count_request_prompt_tokens("/responses", body)
    if earlier:
        input_tokens += count_responses_input(earlier, None, model) - REPLY_PRIMING
    _check_context(model, input_tokens, body.get("truncation"))

    functions = _functions(body.get("tools"))
    choice, functions = _tool_choice(body.get("tool_choice", "auto"), functions)
    json_mode, json_schema = _json_mode(body)
    effort = (body.get("reasoning") or {}).get("effort")
    reasoning = replies.reasoning_tokens(model, effort)
    cap = body.get("max_output_tokens") if isinstance(body.get("max_output_tokens"), int) else None
    if cap is not None:
        reasoning = min(reasoning, cap)
    ask = Ask(
        model=model,
        last_user=last_user_text(items) or last_user_text(earlier),
        after_tool_result=bool(items) and items[-1].get("type") == "function_call_output",
        functions=functions,
        tool_choice=choice,
        parallel_tool_calls=body.get("parallel_tool_calls") is not False,
        json_mode=json_mode,
        json_schema=json_schema,
        max_tokens=None if cap is None else cap - reasoning,
    )
    rng = generate.rng_for(body)
    d = replies.draft(ask, fixtures, rng)
    include = {str(x) for x in body.get("include") or []}
    summary = (body.get("reasoning") or {}).get("summary") in ("auto", "concise", "detailed")
    output = _output(d, reasoning, summary, include, model, body.get("top_logprobs") or 0, rng)

    visible = count_text(d.output_text(), model)
    context = _strip_ids(earlier + items)
    if isinstance(body.get("instructions"), str):
        context.insert(0, {"role": "developer", "content": body["instructions"]})
    cached = cache.cached_tokens(key, model, context, input_tokens)
    usage = {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": visible + reasoning,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + visible + reasoning,
    }
    response = base_object(body, model, new_id("resp_"), "completed")
    response["output"] = output
    response["usage"] = usage
    if d.finish_reason == "length":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    else:
        response["completed_at"] = int(time.time())
    return Turn(response, items, usage, include)
