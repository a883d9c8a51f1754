"""Cut the table of the API's operations (method, path template, body kind) out of OpenAI's spec.

The gateway parses a body by what the endpoint expects (``ferryman.endpoints``): JSON,
``multipart/form-data`` (uploads), or either. This script reads that from each operation's
``requestBody`` in ``../shared/openai-openapi/openapi.yaml`` and writes
``src/ferryman/data/endpoints.json``.

    python scripts/vendor_endpoints.py ../shared/openai-openapi/openapi.yaml
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parents[1] / "src/ferryman/data/endpoints.json"
METHODS = ("get", "post", "put", "patch", "delete")


def body_kind(operation: dict) -> str:
    content = (operation.get("requestBody") or {}).get("content") or {}
    multipart = "multipart/form-data" in content
    other = any(kind != "multipart/form-data" for kind in content)
    if multipart and other:
        return "either"
    if multipart:
        return "multipart"
    return "json" if content else "none"


def main(src: str) -> None:
    raw = Path(src).read_bytes()
    spec = yaml.load(raw, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    rows = []
    seen = set()
    for path, operations in sorted(spec["paths"].items()):
        template = path.partition("?")[0]  # "/responses?beta=true": the same operation's beta spelling
        for method in METHODS:
            operation = operations.get(method)
            if isinstance(operation, dict) and (method, template) not in seen:
                seen.add((method, template))
                rows.append([method.upper(), template, body_kind(operation)])
    out = {
        "_source": {
            "repo": "github.com/openai/openai-openapi",
            "sha256": hashlib.sha256(raw).hexdigest(),
            "made_by": "scripts/vendor_endpoints.py",
        },
        "operations": rows,
    }
    lines = ",\n".join("  " + json.dumps(row) for row in rows)
    OUT.write_text(f'{{"_source": {json.dumps(out["_source"])},\n "operations": [\n{lines}\n]}}\n')
    print(f"{OUT}: {len(rows)} operations")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/openai-openapi/openapi.yaml")
