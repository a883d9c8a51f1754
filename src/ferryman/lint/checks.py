"""The rules about what a call sends: model ids (FM1xx), parameters (FM2xx), the 0.x SDK (FM3xx),
retiring APIs (FM401), keys in the source (FM601) and streams without usage (FM701).

Everything a rule knows about models comes from :mod:`ferryman.catalogue` (shutdown dates,
successors, which families reason, which parameters they reject, which APIs retire): this module
holds the *shapes* of code only, so updating the catalogue's data updates the linter.

A model id is looked at where the code uses it as one: a ``model=``/``model_name=`` argument of any
call (the SDK's, LangChain's, the Agents SDK's), a ``"model"`` key of a dict literal, a default of a
parameter or a value of a variable named like ``model``/``default_model``/``CHAT_MODEL``, the model
argument of ``client.models.retrieve``, and the default of ``os.getenv("..._MODEL", ...)``. A finding
is reported at the literal itself (once, however many calls use it), so ``--fix-models`` and
``# ferryman: noqa`` act where the id is written. Lists of model ids (capability tables, test
matrices) and comparisons (``if model == "o1"``) are not uses and are never reported.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from ferryman import catalogue
from ferryman.lint.calls import CHAT, COMPLETIONS, RESPONSES, SdkCall
from ferryman.lint.context import Context, lifecycle
from ferryman.lint.scan import Scope, Site
from ferryman.lint.values import UNKNOWN, Val

MODEL_KEYWORDS = frozenset({"model", "model_name"})
MODEL_NAME = re.compile(r"^(?:.*_)?model(?:_name|_id)?$", re.IGNORECASE)
LEGACY = {
    "ChatCompletion": "client.chat.completions.create", "Completion": "client.completions.create",
    "Embedding": "client.embeddings.create", "Edit": "client.chat.completions.create",
    "Image": "client.images.generate", "Moderation": "client.moderations.create",
    "Audio": "client.audio.transcriptions.create", "File": "client.files", "FineTune": "client.fine_tuning.jobs",
    "FineTuningJob": "client.fine_tuning.jobs", "Model": "client.models", "Engine": "client.models",
    "Customer": "a client", "Deployment": "a client",
}  # fmt: skip
# Module settings of 0.x that 1.x dropped (the rest still configure 1.x's module-level client).
REMOVED_SETTINGS = {
    "api_base": "base_url", "api_key_path": "api_key", "proxy": "http_client", "aiosession": "http_client",
    "requestssession": "http_client", "verify_ssl_certs": "http_client", "ca_bundle_path": "http_client",
    "app_info": "default_headers", "log": "the OPENAI_LOG environment variable",
}  # fmt: skip
# The settings of 1.x's module-level client (openai/__init__.py, SDK 3.x).
MODULE_SETTINGS = frozenset({
    *REMOVED_SETTINGS, "api_key", "admin_api_key", "organization", "project", "webhook_secret", "base_url",
    "timeout", "max_retries", "default_headers", "default_query", "http_client", "api_type", "api_version",
    "azure_endpoint", "azure_ad_token", "azure_ad_token_provider",
})  # fmt: skip
_KEY = re.compile(r"^(?:sk|fm)-[A-Za-z0-9_\-]{16,}$")
_TOKEN = re.compile(r"^[A-Za-z0-9_\-]{32,}$")
_PLACEHOLDER = ("xxxx", "your", "example", "placeholder", "dummy", "fake", "changeme", "redacted", "test", "mock")


def run(cx: Context) -> None:
    if cx.on("FM101", "FM102"):
        models(cx)
    if cx.on("FM201", "FM202", "FM203", "FM303", "FM701"):
        for call in cx.sdk_calls:
            parameters(cx, call)
    if cx.on("FM301", "FM302") and not cx.sdk_source:  # the SDK implements its module client
        legacy(cx)
    if cx.on("FM401"):
        apis(cx)
    if cx.on("FM601"):
        keys(cx)


# -- FM101 / FM102: model ids ------------------------------------------------------------------


def _model_uses(cx: Context) -> list[tuple[ast.expr, Scope, ast.AST | None]]:
    """(expression used as a model id, its scope, the use when it is not the expression itself)."""
    facts = cx.facts
    azure = {id(c.node) for c in cx.sdk_calls if cx.clients.of(c.client_expr, c.site.scope).kind == "azure"}
    uses: list[tuple[ast.expr, Scope, ast.AST | None]] = []
    for site in facts.calls:
        call: ast.Call = site.node
        if id(call) in azure:  # Azure's model= is a deployment name
            continue
        for keyword in call.keywords:
            if keyword.arg in MODEL_KEYWORDS:
                uses.append((keyword.value, site.scope, keyword))
        func = call.func
        if not call.args or not isinstance(func, ast.Attribute):
            if isinstance(func, ast.Name) and len(call.args) >= 2:
                _getenv_default(cx, site, uses)
            continue
        on_models = isinstance(func.value, ast.Attribute) and func.value.attr == "models"
        if func.attr in ("retrieve", "delete") and on_models:
            uses.append((call.args[0], site.scope, call))
        elif len(call.args) >= 2 and func.attr in ("getenv", "get"):
            _getenv_default(cx, site, uses)
    for site in facts.dicts:
        for key, value in zip(site.node.keys, site.node.values, strict=True):
            if isinstance(key, ast.Constant) and key.value in MODEL_KEYWORDS:
                uses.append((value, site.scope, key))
    for name, site in facts.defaults:
        if MODEL_NAME.match(name):
            uses.append((site.node, site.scope, None))
    for site in facts.assigns:
        targets = site.node.targets if isinstance(site.node, ast.Assign) else [site.node.target]
        if not any(MODEL_NAME.match(_target_name(t) or "") for t in targets):
            continue
        value = site.node.value
        if isinstance(value, ast.Call):  # pydantic: model_name: str = Field(default="gpt-4o")
            value = next((k.value for k in value.keywords if k.arg == "default"), None)
        if value is not None:
            uses.append((value, site.scope, None))
    return uses


def _target_name(target: ast.expr) -> str | None:
    if isinstance(target, ast.Name):
        return target.id
    if isinstance(target, ast.Attribute):
        return target.attr
    return None


def _getenv_default(cx: Context, site: Site, uses: list[tuple[ast.expr, Scope, ast.AST | None]]) -> None:
    call: ast.Call = site.node
    if cx.facts.qualname(call.func) not in ("os.getenv", "os.environ.get"):
        return
    key = call.args[0]
    if isinstance(key, ast.Constant) and isinstance(key.value, str) and MODEL_NAME.match(key.value):
        uses.append((call.args[1], site.scope, None))


def models(cx: Context) -> None:
    seen: dict[int, tuple[ast.Constant, ast.AST | None]] = {}
    for expr, scope, use in _model_uses(cx):
        found = cx.resolver.string(expr, scope)
        if found is None or not isinstance(found.node, ast.Constant):
            continue
        via = use if found.node is not expr else None
        earlier = seen.get(id(found.node), (found.node, None))[1]
        if earlier is None or (via is not None and _at(via) < _at(earlier)):
            seen[id(found.node)] = (found.node, via)
    for literal, via in seen.values():
        model = str(literal.value)
        life = lifecycle(model)
        if life is None or life.shutdown_date is None:
            continue
        past, when = cx.when(life.shutdown_date)
        if not past and not cx.in_window(life.shutdown_date):
            continue
        text = f"'{model}' {'was retired' if past else 'retires'} {when}"
        if via is not None and getattr(via, "lineno", None) != literal.lineno:
            text += f" (the model at line {via.lineno})"  # type: ignore[attr-defined]
        successor = life.successor
        edit = None
        if _usable_successor(successor):
            text += f"; successor: '{successor}'"
            edit = cx.edit("replace", literal, model, str(successor), "models")
        else:
            text += f"; successor: {successor!r}" if successor else "; no successor named"
        cx.add("FM101" if past else "FM102", literal, text, edit)


def _at(node: ast.AST) -> tuple[int, int]:
    return getattr(node, "lineno", 0), getattr(node, "col_offset", 0)


def _usable_successor(successor: str | None) -> bool:
    """A successor ``--fix-models`` may write: one model id the catalogue knows."""
    if not successor or any(c in successor for c in " /:,"):
        return False
    return catalogue.lookup(successor) is not None or catalogue.family(successor) is not None


# -- FM2xx, FM303, FM701: what a chat or responses call sends ----------------------------------


def parameters(cx: Context, call: SdkCall) -> None:
    if call.endpoint not in (CHAT, RESPONSES, COMPLETIONS):
        return
    scope = call.site.scope
    body = cx.resolver.body(call.node, scope)
    if call.endpoint == RESPONSES and "max_tokens" in body.nodes:
        keyword = body.nodes["max_tokens"]
        edit = None
        if "max_output_tokens" not in body.args:
            edit = cx.edit("rename", keyword, "max_tokens", "max_output_tokens")
        cx.add("FM202", keyword, f"{call.label}() has no max_tokens (TypeError): use max_output_tokens", edit)
    if call.endpoint == CHAT:
        for param, instead in (("functions", "tools"), ("function_call", "tool_choice")):
            if param in body.nodes:
                cx.add("FM303", body.nodes[param], f"{param}= is deprecated: use {instead}=")
    if call.endpoint in (CHAT, COMPLETIONS) and not cx.clients.of(call.client_expr, scope).pipeline:
        _stream_usage(cx, call, body)  # Ferryman's pipeline asks for usage itself
    if call.endpoint == COMPLETIONS:
        return
    model = body.args.get("model")
    if not isinstance(model, Val) or not isinstance(model.value, str):
        return
    if cx.clients.of(call.client_expr, scope).kind == "azure":
        return
    sent: dict[str, Any] = body.plain()
    if body.open:
        sent.setdefault("reasoning_effort", UNKNOWN)
    if "reasoning" in sent and not isinstance(sent["reasoning"], dict):
        sent["reasoning"] = {"effort": UNKNOWN}
    for rejection in catalogue.rejected_params(model.value, call.endpoint, sent):
        written = body.nodes.get(rejection.param)
        node: ast.AST = written if written is not None else call.node
        if rejection.param == "max_tokens":
            instead = rejection.replacement or "max_completion_tokens"
            edit = None
            if written is not None and instead not in body.args:
                edit = cx.edit("rename", written, "max_tokens", instead)
            cx.add("FM201", node, f"max_tokens is rejected by reasoning model '{model.value}' "
                   f"(400 {rejection.code}): use {instead}", edit)  # fmt: skip
        else:
            value = sent.get(rejection.param)
            cx.add("FM203", node, f"{rejection.param}={value!r} is rejected by reasoning model '{model.value}' "
                   f"(400 {rejection.code}): only the default is accepted")  # fmt: skip


def _stream_usage(cx: Context, call: SdkCall, body: Any) -> None:
    if "FM701" not in cx.codes:
        return
    stream = body.args.get("stream")
    if not call.streams and not (isinstance(stream, Val) and stream.value is True):
        return
    options = body.args.get("stream_options")
    if options is not None:
        if not isinstance(options, Val) or not isinstance(options.value, dict):
            return
        usage = options.value.get("include_usage")
        if usage is UNKNOWN or (isinstance(usage, Val) and usage.value is True):
            return
    elif body.open:
        return
    edit = None
    anchor = body.nodes.get("stream") or (call.node.keywords[-1] if call.node.keywords else None)
    if options is None and anchor is not None and anchor.arg is not None:
        safety = "safe" if _consumed_safely(cx, call) else "unsafe"
        edit = cx.edit("add", anchor, anchor.arg, 'stream_options={"include_usage": True}', safety)
    what = "stream=True" if not call.streams else f"{call.label}()"
    cx.add("FM701", call.node, f'{what} without stream_options={{"include_usage": True}}: '
           "the stream reports no token usage (cost-blind)", edit)  # fmt: skip


def _consumed_safely(cx: Context, call: SdkCall) -> bool:
    """Whether adding ``include_usage`` cannot break the code reading the stream: its function never
    indexes ``.choices[...]`` (the usage chunk has ``choices == []``), and the stream is bound to a
    name used only as a ``for`` loop's iterable or for its attributes (not returned, not passed on)."""
    where: ast.AST = call.site.ctx.func or cx.facts.tree
    name = None
    fors = attrs = loads = 0
    nodes = list(ast.walk(where))
    for node in nodes:
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "choices":
            return False
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = node.value.value if isinstance(node.value, ast.Await) else node.value
            if value is call.node:
                name = node.targets[0].id
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                value = item.context_expr.value if isinstance(item.context_expr, ast.Await) else item.context_expr
                if value is call.node and isinstance(item.optional_vars, ast.Name):
                    name = item.optional_vars.id
    if name is None:
        return False
    for node in nodes:
        if isinstance(node, (ast.For, ast.AsyncFor)) and isinstance(node.iter, ast.Name) and node.iter.id == name:
            fors += 1
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == name:
            attrs += 1
        elif isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Load):
            loads += 1
    return fors > 0 and loads == fors + attrs


# -- FM301 / FM302: the 0.x SDK ----------------------------------------------------------------


def legacy(cx: Context) -> None:
    facts = cx.facts
    for site in facts.calls:
        qualname = facts.qualname(site.node.func)
        if not qualname or not qualname.startswith("openai."):
            continue
        parts = qualname.split(".")
        if len(parts) >= 3 and parts[1] in LEGACY:
            cx.add("FM301", site.node, f"{qualname} is the 0.x SDK (removed in 1.0): use {LEGACY[parts[1]]}")
    for node in facts.import_nodes:
        if isinstance(node, ast.ImportFrom):
            old = not node.level and (node.module or "").startswith("openai.error")
        else:
            old = any(a.name.startswith("openai.error") for a in node.names)  # type: ignore[attr-defined]
        if old:
            cx.add("FM301", node, "openai.error is the 0.x SDK (removed in 1.0): import the errors from openai")
    for site in facts.handlers:
        kinds = site.node.type.elts if isinstance(site.node.type, ast.Tuple) else [site.node.type]
        for kind in kinds:
            qualname = facts.qualname(kind)
            if qualname and qualname.startswith("openai.error."):
                name = qualname.rpartition(".")[2]
                cx.add("FM301", kind, f"{qualname} is the 0.x SDK (removed in 1.0): catch openai.{name}")
    for site in facts.assigns:
        targets = site.node.targets if isinstance(site.node, ast.Assign) else [site.node.target]
        for target in targets:
            qualname = facts.qualname(target) if isinstance(target, ast.Attribute) else None
            if not qualname or qualname.count(".") != 1 or not qualname.startswith("openai."):
                continue
            setting = qualname.partition(".")[2]
            if setting in REMOVED_SETTINGS:
                cx.add("FM302", target, f"{qualname} was removed in 1.0: pass {REMOVED_SETTINGS[setting]} "
                       "to the client, OpenAI(...)")  # fmt: skip
            elif setting in MODULE_SETTINGS:
                cx.add("FM302", target, f"{qualname} = ... configures the process-wide module client (the 0.x "
                       f"style): pass {setting}= to a client, OpenAI({setting}=...)")  # fmt: skip


# -- FM401: APIs that retire -------------------------------------------------------------------


def apis(cx: Context) -> None:
    for site in cx.facts.calls:
        found = cx.clients.api_path(site)
        if found is None:
            continue
        method, path, dotted_call = found
        api = catalogue.api_retirement(method, path)
        if api is None or not _retires(api, method, path):
            continue
        past, when = cx.when(api.shutdown_date)
        if not past and not cx.in_window(api.shutdown_date):
            continue
        text = f"{api.name}: {'shut down' if past else 'shutting down'} {when} ({dotted_call})"
        text += f"; successor: {api.successor}" if api.successor else "; no successor named"
        cx.add("FM401", site.node, text)


def _retires(api: catalogue.ApiRetirement, method: str, path: str) -> bool:
    """An entry naming a method (``POST /v1/fine_tuning/jobs``: creating jobs) retires that exact
    call, not the calls on existing items below it (cancelling a job); a bare path retires all."""
    for entry in api.paths:
        want, _, prefix = entry.rpartition(" ")
        if not want and (path == prefix or path.startswith(prefix + "/")):
            return True
        if want == method and path == prefix:
            return True
    return False


# -- FM601: keys in the source -----------------------------------------------------------------


def secret(text: str, key_position: bool) -> bool:
    """Whether ``text`` looks like a real key: ``sk-``/``fm-`` and a random tail (upper and lower case
    letters and digits, as OpenAI's keys and Ferryman's base64 keys have) anywhere; in an ``api_key``
    position also a long random token (an Azure key). Placeholders and made-up test keys
    (``sk-`` then lower-case words and digits, no random tail) are not."""
    lowered = text.lower()
    if any(word in lowered for word in _PLACEHOLDER):
        return False
    tail = text[3:] if text[:3] in ("sk-", "fm-") else text
    if len(set(tail)) < 8:
        return False
    if text[:3] in ("sk-", "fm-"):
        mixed = any(c.isupper() for c in tail) and any(c.islower() for c in tail) and any(c.isdigit() for c in tail)
        return bool(_KEY.match(text)) and mixed
    return (
        key_position and bool(_TOKEN.match(text)) and any(c.isdigit() for c in text) and any(c.isalpha() for c in text)
    )


def _redacted(text: str) -> str:
    return text[:3] + "…"


def _key_positions(cx: Context) -> list[tuple[ast.expr, Scope]]:
    facts = cx.facts
    found: list[tuple[ast.expr, Scope]] = []
    for site in facts.calls:
        for keyword in site.node.keywords:
            if keyword.arg and keyword.arg.lower().endswith("api_key"):
                found.append((keyword.value, site.scope))
        args = site.node.args
        func = site.node.func
        setter = isinstance(func, ast.Attribute) and func.attr in ("setdefault", "putenv") and len(args) >= 2
        if setter and isinstance(args[0], ast.Constant) and str(args[0].value).upper().endswith("API_KEY"):
            found.append((args[1], site.scope))
    for site in facts.assigns:
        targets = site.node.targets if isinstance(site.node, ast.Assign) else [site.node.target]
        for target in targets:
            name = _target_name(target)
            if isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Constant):
                name = str(target.slice.value)
            if name and name.lower().endswith("api_key"):
                found.append((site.node.value, site.scope))
    for site in facts.dicts:
        for key, value in zip(site.node.keys, site.node.values, strict=True):
            if isinstance(key, ast.Constant) and isinstance(key.value, str) and key.value.lower().endswith("api_key"):
                found.append((value, site.scope))
    return found


def keys(cx: Context) -> None:
    reported: set[int] = set()
    for site in cx.facts.strings:
        text: str = site.node.value
        bearer = text[7:].strip() if text[:7].lower() == "bearer " else None
        if bearer and secret(bearer, key_position=True):
            reported.add(id(site.node))
            cx.add("FM601", site.node, f"hard-coded API key 'Bearer {_redacted(bearer)}' in the source: "
                   "read it from the environment, and revoke this one")  # fmt: skip
        elif secret(text, key_position=False):
            reported.add(id(site.node))
            cx.add("FM601", site.node, f"hard-coded API key '{_redacted(text)}' in the source: "
                   "read it from the environment (OPENAI_API_KEY), and revoke this one")  # fmt: skip
    for expr, scope in _key_positions(cx):
        found = cx.resolver.string(expr, scope)
        if found is None or not isinstance(found.node, ast.Constant) or id(found.node) in reported:
            continue
        if secret(found.value, key_position=True):
            reported.add(id(found.node))
            cx.add("FM601", found.node, f"hard-coded API key '{_redacted(found.value)}' in the source: "
                   "read it from the environment (OPENAI_API_KEY), and revoke this one")  # fmt: skip
