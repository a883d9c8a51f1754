"""Where a request can name a stored object: the one table the ownership stage reads.

- **In the path**: ``/files/<id>``, ``/batches/<id>``, ``/fine_tuning/jobs/<id>``,
  ``/responses/<id>``, ``/chat/completions/<id>`` (stored completions), ``/conversations/<id>``,
  ``/vector_stores/<id>``, ``/uploads/<id>``, ``/containers/<id>``, ``/models/<ft:…>``
  (:func:`target`). Collection names are compared whatever their case.
- **In the body**, at any depth (:func:`named_ids`): the fields of :data:`ID_FIELDS` (``file_id``
  and ``file_ids``, ``vector_store_ids``, a tool's ``container``, ``conversation``,
  ``previous_response_id``, ``input_file_id``, ``training_file``…), and a fine-tuned ``model``.
  Annotations (output metadata a caller sends back as history) are not instructions to read
  anything and are skipped.
- **Kinds Ferryman does not track** (assistants, threads, evals, realtime sessions, skills,
  videos, the organisation's admin API…) are outside :data:`ISOLATED`: a virtual key is refused
  them, unless ``gateway.pass_through`` names them, and so is a body field naming one of them
  (``assistant_id``, ``thread_id``, ``eval_id``).

The spec (``../shared/openai-openapi``) is where these names come from; the path templates
themselves are vendored in ``data/endpoints.json`` (:mod:`ferryman.endpoints`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

# Path collection → (the kind recorded, the 404 message for an id, its param, its code)
COLLECTIONS: dict[str, tuple[str, Callable[[str], str], str | None, str | None]] = {
    "files": ("file", lambda i: f"No such File object: {i}", None, None),
    "batches": ("batch", lambda i: f"No batch found with id '{i}'.", None, None),
    "fine_tuning": ("ftjob", lambda i: f"Could not find fine-tune job: {i}", None, None),
    "responses": ("response", lambda i: f"Response with id '{i}' not found.", None, None),
    "chat_completions": ("chatcmpl", lambda i: f"Completion with id '{i}' not found.", None, None),
    "conversations": ("conversation", lambda i: f"Conversation with id '{i}' not found.", None, None),
    "vector_stores": ("vector_store", lambda i: f"No vector store found with id '{i}'.", None, None),
    "uploads": ("upload", lambda i: f"No upload found with id '{i}'.", None, None),
    "containers": ("container", lambda i: f"Container with id '{i}' not found.", None, None),
    "items": ("item", lambda i: f"Item with id '{i}' not found.", "input", None),
    "models": (
        "model",
        lambda i: f"The model `{i}` does not exist or you do not have access to it.",
        "model",
        "model_not_found",
    ),
}
# Body fields (at any depth) that name an object of a collection; None: a kind not tracked.
ID_FIELDS: dict[str, str | None] = {
    "file_id": "files",
    "file_ids": "files",
    "input_file_id": "files",
    "training_file": "files",
    "validation_file": "files",
    "previous_response_id": "responses",
    "conversation": "conversations",
    "conversation_id": "conversations",
    "vector_store_id": "vector_stores",
    "vector_store_ids": "vector_stores",
    "container": "containers",
    "container_id": "containers",
    "assistant_id": None,
    "thread_id": None,
    "eval_id": None,
}
# ``Exchange.notes`` key: the models the lines of an uploaded batch file name (the intake's).
UPLOAD_MODELS = "upload_models"
# Raw-body markers: a body holding none of them names no object (one quick look first). The
# gateway forwards its own serialisation, so a name cannot hide behind ``\u`` escapes.
MARKERS = (b"file", b"_id", b"vector_store", b"container", b"conversation", b'"id"')
# First path segments a virtual key may use (with, where given, the second segments allowed).
ISOLATED: dict[str, frozenset[str] | None] = {
    "chat": frozenset({"completions"}),
    "completions": None,
    "embeddings": None,
    "moderations": None,
    "images": frozenset({"generations", "edits", "variations"}),
    "audio": frozenset({"speech", "transcriptions", "translations"}),
    "models": None,
    "files": None,
    "batches": None,
    "fine_tuning": frozenset({"jobs"}),
    "responses": None,
    "conversations": None,
    "vector_stores": None,
    "uploads": None,
    "containers": None,
}
# ``/responses/<name>`` paths that are not a response id (``POST /responses/input_tokens``).
RESPONSE_ACTIONS = frozenset({"input_tokens", "compact"})
# Fields of a batch or job whose objects become the caller's too (files, the fine-tuned model).
PRODUCED = {
    "output_file_id": "file",
    "error_file_id": "file",
    "result_files": "file",
    "fine_tuned_model": "model",
    "fine_tuned_model_checkpoint": "model",
}


def fine_tuned(model: Any) -> bool:
    """A model a fine-tuning job made (``ft:BASE:org:suffix:id``): somebody's own."""
    return isinstance(model, str) and model[:3].lower() == "ft:"


def isolated(path: str, allowed: frozenset[str] = frozenset()) -> bool:
    """True when a virtual key may use ``path``: its kind is tracked (or stateless), or named in
    ``gateway.pass_through``."""
    parts = path.strip("/").split("/")
    first = parts[0].lower()
    if first in allowed:
        return True
    if first not in ISOLATED:
        return False
    seconds = ISOLATED[first]
    return seconds is None or len(parts) < 2 or parts[1].lower() in seconds


def target(path: str) -> tuple[str, str | None] | None:
    """``/files/file-1/content`` → ("files", "file-1"); ``/files`` → ("files", None);
    ``/fine_tuning/jobs/ftjob-1/events`` → ("fine_tuning", "ftjob-1"); ``/models/ft:…`` →
    ("models", "ft:…") (a base model is nobody's: None); other paths → None."""
    parts = [p for p in path.split("/") if p]
    # Collections are told apart whatever their case: an upstream that ignored case must not
    # serve ``/Files/<another key's id>`` past the check.
    if parts:
        parts[0] = parts[0].lower()
        if len(parts) >= 2 and parts[0] in ("chat", "fine_tuning"):
            parts[1] = parts[1].lower()
    if len(parts) >= 2 and parts[0] == "chat" and parts[1] == "completions":
        parts = ["chat_completions", *parts[2:]]  # stored chat completions (store: true)
    if not parts or parts[0] not in COLLECTIONS:
        return None
    if parts[0] == "fine_tuning":
        if len(parts) < 2 or parts[1] != "jobs":
            return None
        parts = ["fine_tuning", *parts[2:]]
    if parts[0] == "responses" and len(parts) == 2 and parts[1] in RESPONSE_ACTIONS:
        return None  # an action on new input, not a stored response's id
    if parts[0] == "models" and len(parts) > 1 and not fine_tuned(parts[1]):
        return None  # a base model: everyone's
    return parts[0], (parts[1] if len(parts) > 1 else None)


def named_ids(value: Any, depth: int = 0) -> Iterator[tuple[str | None, str, str]]:
    """``(collection, id, field)`` for every object a request body names (collection None: a kind
    Ferryman does not track). ``model`` fields naming a fine-tuned model count too."""
    if depth > 64:
        return
    if isinstance(value, list):
        for item in value:
            yield from named_ids(item, depth + 1)
        return
    if not isinstance(value, dict):
        return
    reference = value.get("type") == "item_reference" or (len(value) == 1 and "id" in value)
    if reference and isinstance(value.get("id"), str):  # an input naming a stored item by its id
        yield "items", value["id"], "input"
    for key, item in value.items():
        if key == "annotations":
            continue  # output metadata sent back as history: names nothing to read
        collection = ID_FIELDS.get(key, "") if isinstance(key, str) else ""
        if collection != "":
            if isinstance(item, str):
                yield collection, item, key
                continue
            if isinstance(item, list) and all(isinstance(i, str) for i in item):
                yield from ((collection, i, key) for i in item)
                continue
            if isinstance(item, dict) and isinstance(item.get("id"), str):  # {"conversation": {"id": …}}
                yield collection, item["id"], key
        elif key == "model" and fine_tuned(item):
            yield "models", item, key
        if isinstance(item, dict | list):
            yield from named_ids(item, depth + 1)


def form_field(name: str) -> str:
    """A multipart form's field name as the API reads it: ``images[0][file_id]`` → ``file_id``."""
    if name.endswith("]") and "[" in name:
        return name[name.rindex("[") + 1 : -1]
    return name
