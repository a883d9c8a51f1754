"""Fine-tuning data: which models and methods can be trained, training files checked as
OpenAI checks them, and the training they get.

A job's data is read while it is ``validating_files``. A problem fails the job with an
``error`` naming the example (``Example 3, message 2 ...``) or the line that is not JSON, in
the words OpenAI's own failed jobs use. A file that passes yields its example count and its
tokens per epoch (what ``trained_tokens`` bills, times the number of epochs).

Formats (``kind``):

- ``chat`` (supervised): ``{"messages": [...], "tools"?, "parallel_tool_calls"?}``
- ``dpo``: ``{"input": {"messages": [...], "tools"?, "parallel_tool_calls"?},
  "preferred_output": [assistant message], "non_preferred_output": [assistant message]}``
- ``completion`` (babbage-002, davinci-002): ``{"prompt": "...", "completion": "..."}``
- ``reinforcement``: ``{"messages": [... ending with a user message], "tools"?, <any key>}``

The last part simulates training: ``"auto"`` hyperparameters resolved from the dataset
size, the steps, which steps keep a checkpoint (the last three epochs), a reproducible loss
curve per step, and the results CSV.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from typing import Any, Literal

from ferryman.catalogue import base_model
from ferryman.errors import invalid_request
from ferryman.tokens import count_chat_messages, count_text

Kind = Literal["chat", "dpo", "completion", "reinforcement"]

MIN_EXAMPLES = 10
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_EXPECTED_TAGS = ", ".join(f"'{r}'" for r in ROLES)
_MESSAGE_KEYS: dict[str, set[str]] = {
    "system": {"role", "content", "name"},
    "developer": {"role", "content", "name"},
    "user": {"role", "content", "name"},
    "assistant": {"role", "content", "name", "weight", "tool_calls", "function_call", "refusal"},
    "tool": {"role", "content", "tool_call_id", "name"},
    "function": {"role", "content", "name"},
}
_PART_TYPES = {"user": ("text", "image_url")}


class DataProblem(Exception):
    """Why a job's file was refused: becomes the failed job's ``error``."""

    def __init__(self, code: str, message: str, param: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param

    def as_error(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param}


@dataclass(frozen=True)
class Dataset:
    n_examples: int
    tokens: int  # per epoch


class _Bad(Exception):
    """An example is malformed; the message says where (without the 'Invalid file format.')."""


def check_file(data: bytes, kind: Kind, model: str, param: str = "training_file") -> Dataset:
    """Validate a JSONL fine-tuning file; raise :class:`DataProblem` on the first problem."""
    which = "training" if param == "training_file" else "validation"
    code = f"invalid_{param}"

    def problem(detail: str) -> DataProblem:
        return DataProblem(code, f"The job failed due to an invalid {which} file. Invalid file format. {detail}", param)

    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise problem("The file is not UTF-8 encoded text.") from None
    n_examples = 0
    tokens = 0
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        n_examples += 1
        try:
            example = json.loads(line)
        except ValueError as error:
            detail = f"line contains invalid json: {error} (line {line_number})"
            raise problem(f"Example {n_examples} cannot be parsed. Error: {detail}") from None
        try:
            tokens += _check_example(example, n_examples, kind, model)
        except _Bad as bad:
            raise problem(str(bad)) from None
    if param == "training_file" and n_examples < MIN_EXAMPLES:
        raise DataProblem(
            "invalid_n_examples",
            f"Training file has {n_examples} example(s), but must have at least {MIN_EXAMPLES} examples",
            param,
        )
    if n_examples == 0:
        raise problem("The file has no examples.")
    return Dataset(n_examples, tokens)


def _check_example(example: Any, n: int, kind: Kind, model: str) -> int:
    if not isinstance(example, dict):
        raise _Bad(f"Example {n} is not a JSON object.")
    if kind == "completion":
        return _completion(example, n, model)
    if kind == "dpo":
        return _dpo(example, n, model)
    if "messages" not in example:
        raise _Bad(f"Example {n} is missing key 'messages'.")
    if kind == "chat":
        for key in example:
            if key not in ("messages", "tools", "parallel_tool_calls", "functions"):
                raise _Bad(f'Example {n} contains an extra "{key}".')
    messages: list[dict[str, Any]] = example["messages"]
    tools = _tools(example, n)
    _messages(messages, f"Example {n}", trained=kind == "chat")
    if kind == "reinforcement" and messages[-1].get("role") != "user":
        raise _Bad(f"Example {n}, message {len(messages)} must be a user message: the model answers the last message.")
    return count_chat_messages(messages, model, tools=tools)


def _completion(example: dict[str, Any], n: int, model: str) -> int:
    for key in ("prompt", "completion"):
        if key not in example:
            raise _Bad(f"Example {n} is missing key '{key}'.")
        if not isinstance(example[key], str):
            raise _Bad(f"Example {n} key '{key}' must be a string.")
    for key in example:
        if key not in ("prompt", "completion"):
            raise _Bad(f'Example {n} contains an extra "{key}".')
    return count_text(example["prompt"], model) + count_text(example["completion"], model)


def _dpo(example: dict[str, Any], n: int, model: str) -> int:
    for key in ("input", "preferred_output", "non_preferred_output"):
        if key not in example:
            raise _Bad(f"Example {n} is missing key '{key}'.")
    for key in example:
        if key not in ("input", "preferred_output", "non_preferred_output"):
            raise _Bad(f'Example {n} contains an extra "{key}".')
    given = example["input"]
    if not isinstance(given, dict):
        raise _Bad(f"Example {n} key 'input' must be an object with 'messages'.")
    if "messages" not in given:
        raise _Bad(f"Example {n} input is missing key 'messages'.")
    tools = _tools(given, n)
    _messages(given["messages"], f"Example {n} input", trained=False)
    total = count_chat_messages(given["messages"], model, tools=tools)
    for key in ("preferred_output", "non_preferred_output"):
        output = example[key]
        where = f"Example {n} {key}"
        if not isinstance(output, list) or len(output) != 1:
            raise _Bad(f"{where} must be a list holding exactly one assistant message.")
        message = output[0]
        if not isinstance(message, dict) or message.get("role") != "assistant":
            raise _Bad(f"{where}, message 1 must have role 'assistant'.")
        if not isinstance(message.get("content"), str) or not message["content"]:
            raise _Bad(f"{where}, message 1 content must be a non-empty string (DPO is text-only).")
        total += count_chat_messages(output, model)
    return total


def _tools(container: dict[str, Any], n: int) -> Any:
    tools = container.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _Bad(f"Example {n} key 'tools' must be a list.")
        for i, tool in enumerate(tools, start=1):
            function = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
                raise _Bad(f"Example {n}, tool {i} must be {{'type': 'function', 'function': {{...}}}}.")
            if not isinstance(function.get("name"), str):
                raise _Bad(f"Example {n}, tool {i} function is missing key 'name'.")
    parallel = container.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise _Bad(f"Example {n} key 'parallel_tool_calls' must be a boolean.")
    return tools


def _messages(messages: Any, where: str, trained: bool) -> None:
    if not isinstance(messages, list) or not messages:
        raise _Bad(f"{where} key 'messages' must be a non-empty list.")
    for m, message in enumerate(messages, start=1):
        _message(message, f"{where}, message {m}")
    if trained and not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        raise _Bad(f"{where} has no assistant message; each example needs at least one to train on.")


def _message(message: Any, where: str) -> None:
    if not isinstance(message, dict):
        raise _Bad(f"{where} is not a JSON object.")
    if "role" not in message:
        raise _Bad(f"{where} Discriminator 'role' is missing in value")
    role = message["role"]
    if role not in ROLES:
        expected = f"does not match any of the expected tags: {_EXPECTED_TAGS}"
        raise _Bad(f"{where} Input tag '{role}' found using 'role' {expected}")
    for key in message:
        if key not in _MESSAGE_KEYS[role]:
            raise _Bad(f'{where} contains an extra "{key}".')
    if "weight" in message and (message["weight"] not in (0, 1) or isinstance(message["weight"], bool)):
        raise _Bad(f"{where} weight must be 0 or 1.")
    if "name" in message and not isinstance(message["name"], str):
        raise _Bad(f"{where} name must be a string.")
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise _Bad(f"{where} is missing key 'tool_call_id'.")
    if role == "assistant":
        _tool_calls(message, where)
    content = message.get("content")
    if content is None:
        if role == "assistant" and (message.get("tool_calls") or message.get("function_call")):
            return
        raise _Bad(f"{where} is missing key 'content'.")
    if isinstance(content, str):
        return
    if not isinstance(content, list) or not content:
        raise _Bad(f"{where} content must be a string or a non-empty list of content parts.")
    allowed = _PART_TYPES.get(role, ("text",))
    for p, part in enumerate(content, start=1):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in allowed:
            raise _Bad(f"{where}, content part {p} type must be one of {', '.join(allowed)} for role '{role}'.")
        if kind == "text" and not isinstance(part.get("text"), str):
            raise _Bad(f"{where}, content part {p} is missing key 'text'.")
        if kind == "image_url" and not isinstance((part.get("image_url") or {}).get("url"), str):
            raise _Bad(f"{where}, content part {p} is missing key 'image_url.url'.")


def _tool_calls(message: dict[str, Any], where: str) -> None:
    calls = message.get("tool_calls")
    if calls is None:
        return
    if not isinstance(calls, list) or not calls:
        raise _Bad(f"{where} tool_calls must be a non-empty list.")
    for c, call in enumerate(calls, start=1):
        function = call.get("function") if isinstance(call, dict) else None
        if (
            not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not isinstance(function.get("arguments"), str)
        ):
            raise _Bad(f"{where}, tool call {c} must have function.name and function.arguments strings.")


# -- models and methods -------------------------------------------------------------------------------

# Base models that can be fine-tuned, by the snapshot a job records; aliases name a snapshot.
ALIASES = {
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4.1": "gpt-4.1-2025-04-14",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano": "gpt-4.1-nano-2025-04-14",
    "gpt-3.5-turbo": "gpt-3.5-turbo-0125",
    "o4-mini": "o4-mini-2025-04-16",
}
SNAPSHOTS = {
    *ALIASES.values(),
    "gpt-4o-2024-08-06",
    "gpt-3.5-turbo-1106",
    "gpt-3.5-turbo-0613",
    "davinci-002",
    "babbage-002",
}
LEGACY = ("davinci-002", "babbage-002")
DPO_BASES = ("gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06", *(s for s in SNAPSHOTS if s.startswith("gpt-4.1")))
RFT_BASES = ("o4-mini-2025-04-16",)


def method_for(body: dict[str, Any], base: str) -> dict[str, Any]:
    """The job's ``method``, checked against the base model, hyperparameters as asked (``"auto"`` if not)."""
    method = body.get("method") or {"type": "supervised"}
    kind = method["type"]
    snapshot = base_model(base)
    allowed = RFT_BASES if kind == "reinforcement" else DPO_BASES if kind == "dpo" else None
    if (allowed is not None and snapshot not in allowed) or (kind == "supervised" and snapshot in RFT_BASES):
        raise invalid_request(
            f"Fine-tuning method '{kind}' is not supported for model {base}.", "method.type", "invalid_value"
        )
    config = dict(method.get(kind) or {})
    given = dict(config.get("hyperparameters") or {})
    legacy = body.get("hyperparameters")
    if legacy:
        if kind != "supervised":
            raise invalid_request(
                f"'hyperparameters' is only for the supervised method; use 'method.{kind}.hyperparameters'.",
                "hyperparameters",
                "invalid_value",
            )
        given = {**legacy, **given}
    config["hyperparameters"] = requested_hyperparameters(kind, given)
    return {"type": kind, kind: config}


def data_kind(method: str, model: str) -> Kind:
    """The training-file format a job needs."""
    if method in ("dpo", "reinforcement"):
        return "dpo" if method == "dpo" else "reinforcement"
    return "completion" if base_model(model) in LEGACY else "chat"


# -- training ----------------------------------------------------------------------------------------

HYPERPARAMETERS = {
    "supervised": ("batch_size", "learning_rate_multiplier", "n_epochs"),
    "dpo": ("batch_size", "beta", "learning_rate_multiplier", "n_epochs"),
    "reinforcement": (
        "batch_size",
        "compute_multiplier",
        "eval_interval",
        "eval_samples",
        "learning_rate_multiplier",
        "n_epochs",
        "reasoning_effort",
    ),
}
AUTO = {
    "n_epochs": 3,
    "learning_rate_multiplier": 1.8,
    "beta": 0.1,
    "compute_multiplier": 1.0,
    "eval_interval": 1,
    "eval_samples": 1,
}
KEPT_CHECKPOINT_EPOCHS = 3
MAX_METRIC_EVENTS = 50  # OpenAI logs every step; a long job would flood the event list
RESULTS_HEADER = "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"


def requested_hyperparameters(method: str, given: dict[str, Any]) -> dict[str, Any]:
    """What a job shows before training: the values asked for, ``"auto"`` for the rest."""
    return {k: given.get(k, "default" if k == "reasoning_effort" else "auto") for k in HYPERPARAMETERS[method]}


def resolve_hyperparameters(hyper: dict[str, Any], n_examples: int) -> None:
    """Replace ``"auto"`` with the numbers the job trains with (in place)."""
    for key, value in hyper.items():
        if value == "auto":
            hyper[key] = max(1, min(256, round(n_examples * 0.002))) if key == "batch_size" else AUTO[key]


@dataclass(frozen=True)
class Plan:
    total_steps: int
    checkpoint_steps: list[int]  # the ends of the last (up to) three epochs

    @classmethod
    def of(cls, n_examples: int, batch_size: int, n_epochs: int) -> Plan:
        per_epoch = math.ceil(n_examples / batch_size)
        first_kept = max(1, n_epochs - KEPT_CHECKPOINT_EPOCHS + 1)
        return cls(per_epoch * n_epochs, [e * per_epoch for e in range(first_kept, n_epochs + 1)])

    def report_steps(self) -> list[int]:
        """The steps that get a ``metrics`` event: evenly spread, plus every checkpoint and the last."""
        total = self.total_steps
        spread = {math.ceil(total * i / MAX_METRIC_EVENTS) for i in range(1, MAX_METRIC_EVENTS + 1)}
        return sorted({s for s in spread if s >= 1} | set(self.checkpoint_steps) | {total})


def metrics(seed: str, step: int, total: int, validation: bool, full: bool) -> dict[str, float]:
    """A plausible, reproducible training curve: loss falls and token accuracy rises, with noise."""
    rng = random.Random(f"{seed}:{step}")
    loss = max(0.005, 0.12 + 1.7 * math.exp(-4 * step / total) + rng.uniform(-0.08, 0.08))
    accuracy = min(1.0, max(0.0, 1 - loss / 2.2 + rng.uniform(-0.03, 0.03)))
    out = {"step": float(step), "train_loss": round(loss, 5), "train_mean_token_accuracy": round(accuracy, 5)}
    if validation:
        valid = loss + 0.08 + rng.uniform(0, 0.1)
        out["valid_loss"] = round(valid, 5)
        out["valid_mean_token_accuracy"] = round(max(0.0, 1 - valid / 2.2), 5)
        if full:
            out["full_valid_loss"] = round(valid + 0.05, 5)
            out["full_valid_mean_token_accuracy"] = round(max(0.0, 1 - valid / 2), 5)
    return out


def results_csv(seed: str, total: int, validation: bool) -> bytes:
    """The job's results file (one row per step, at most ~100,000 rows)."""
    rows = [RESULTS_HEADER]
    for step in range(1, total + 1, max(1, total // 100_000)):
        m = metrics(seed, step, total, validation, False)
        valid = f"{m['valid_loss']},{m['valid_mean_token_accuracy']}" if validation else ","
        rows.append(f"{step},{m['train_loss']},{m['train_mean_token_accuracy']},{valid}")
    return ("\n".join(rows) + "\n").encode()
