"""Cut the part of OpenAI's OpenAPI spec that the mock serves into the package.

``nullable: true`` and boolean ``exclusiveMinimum``/``exclusiveMaximum`` (OpenAPI 3.0, which
the 3.1 spec still uses in places) are rewritten as JSON Schema 2020-12 so that validators see
what OpenAI means.

The full spec (3 MB of YAML) lives in ``../shared/openai-openapi/openapi.yaml``. The mock
needs only the operations it implements and the schemas they reference, so this script keeps
those paths and the closure of their ``$ref``s, and records where they came from.

    python scripts/vendor_openapi.py ../shared/openai-openapi/openapi.yaml
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

OUT = Path(__file__).resolve().parents[1] / "src/ferryman/mock/data/openapi-subset.json"

PATHS = [
    "/chat/completions",
    "/responses",
    "/responses/{response_id}",
    "/responses/{response_id}/input_items",
    "/embeddings",
    "/moderations",
    "/completions",
    "/models",
    "/models/{model}",
    "/files",
    "/files/{file_id}",
    "/files/{file_id}/content",
    "/batches",
    "/batches/{batch_id}",
    "/batches/{batch_id}/cancel",
    "/fine_tuning/jobs",
    "/fine_tuning/jobs/{fine_tuning_job_id}",
    "/fine_tuning/jobs/{fine_tuning_job_id}/cancel",
    "/fine_tuning/jobs/{fine_tuning_job_id}/events",
    "/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints",
    "/organization/costs",
    "/organization/usage/audio_speeches",
    "/organization/usage/audio_transcriptions",
    "/organization/usage/code_interpreter_sessions",
    "/organization/usage/completions",
    "/organization/usage/embeddings",
    "/organization/usage/file_search_calls",
    "/organization/usage/images",
    "/organization/usage/moderations",
    "/organization/usage/vector_stores",
    "/organization/usage/web_search_calls",
]
# Schemas the mock validates against that no kept operation references directly.
EXTRA_SCHEMAS = ["ErrorResponse", "ResponseStreamEvent", "CreateChatCompletionStreamResponse"]
# Fields OpenAI sends as null (its own examples show it) that the spec types as non-nullable,
# and enum values it sends that the spec lacks. The mock follows the API, so its validators must.
NULLABLE_IN_PRACTICE = {
    "OpenAIFile": ["expires_at", "status_details"],
    "Batch": [
        "cancelled_at",
        "cancelling_at",
        "completed_at",
        "error_file_id",
        "errors",
        "expired_at",
        "expires_at",
        "failed_at",
        "finalizing_at",
        "in_progress_at",
        "output_file_id",
        "model",
        "usage",
    ],
    "ListFilesResponse": ["first_id", "last_id"],
    "ListBatchesResponse": ["first_id", "last_id"],
    "ResponseItemList": ["first_id", "last_id"],
}
EXTRA_ENUM_VALUES = {("OpenAIFile", "purpose"): ["evals"]}
DROP_KEYS = {"x-oaiMeta", "x-codeSamples", "examples", "example", "x-oaiExpandable"}


def _nullable(node: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI 3.0's ``nullable: true`` (still used in places) in JSON Schema 2020-12 terms."""
    node = {k: v for k, v in node.items() if k != "nullable"}
    kind = node.get("type")
    if isinstance(kind, str):
        node["type"] = [kind, "null"]
        if "enum" in node and None not in node["enum"]:
            node["enum"] = [*node["enum"], None]
        return node
    if isinstance(kind, list):
        node["type"] = [*kind, "null"] if "null" not in kind else kind
        return node
    return {"anyOf": [node, {"type": "null"}]}


def _exclusive_bounds(node: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI 3.0's boolean ``exclusiveMinimum: true`` + ``minimum: X`` → 2020-12's ``exclusiveMinimum: X``."""
    for bound in ("Minimum", "Maximum"):
        flag = node.get(f"exclusive{bound}")
        if isinstance(flag, bool):
            del node[f"exclusive{bound}"]
            if flag and bound.lower() in node:
                node[f"exclusive{bound}"] = node.pop(bound.lower())
    return node


def _strip(node: Any) -> Any:
    if isinstance(node, dict):
        out = _exclusive_bounds({k: _strip(v) for k, v in node.items() if k not in DROP_KEYS})
        return _nullable(out) if out.get("nullable") is True else out
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.rsplit("/", 1)[1])
        for v in node.values():
            _refs(v, found)
    elif isinstance(node, list):
        for v in node:
            _refs(v, found)


def main(src: str) -> None:
    raw = Path(src).read_bytes()
    spec = yaml.load(raw, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    paths = {p: _strip(spec["paths"][p]) for p in PATHS}
    schemas = spec["components"]["schemas"]
    wanted: set[str] = set(EXTRA_SCHEMAS)
    _refs(paths, wanted)
    done: set[str] = set()
    while wanted - done:
        name = (wanted - done).pop()
        done.add(name)
        _refs(schemas[name], wanted)
    kept = {n: _strip(schemas[n]) for n in sorted(done)}
    for name, fields in NULLABLE_IN_PRACTICE.items():
        props = kept[name]["properties"]
        for field in fields:
            props[field] = _nullable({**props[field], "nullable": True})
    for (name, field), values in EXTRA_ENUM_VALUES.items():
        kept[name]["properties"][field]["enum"] += values
    out = {
        "openapi": spec["openapi"],
        "info": {
            **spec["info"],
            "x-ferryman-source": {
                "repo": "github.com/openai/openai-openapi",
                "commit": "f85dbe223d40e1a31cba812ab2d755c7e98a92a3",
                "sha256": hashlib.sha256(raw).hexdigest(),
                "licence": "MIT",
            },
        },
        "paths": paths,
        "components": {"schemas": kept},
    }
    OUT.write_text(json.dumps(out, separators=(",", ":"), sort_keys=True))
    print(f"{OUT}: {len(paths)} paths, {len(done)} schemas, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/openai-openapi/openapi.yaml")
