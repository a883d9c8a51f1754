"""Why settings failed to load, in one line that says where and what.

A typo in ``ferryman.toml`` or in a ``FERRYMAN_*`` variable must neither be ignored (the setting
would silently keep its default) nor be buried in a multi-line pydantic report. Every failure
(an unknown key or variable, a bad value, a missing ``FERRYMAN_CONFIG`` file, a TOML syntax
error) becomes a :class:`SettingsError` whose text is one line: the source (the file, or the
variable), the key, what is wrong, and the nearest valid name when there is one::

    ferryman.toml: unknown setting cache.mdoe (did you mean cache.mode?)
    FERRYMAN_CACHE__MDOE: unknown setting (did you mean FERRYMAN_CACHE__MODE?)
    ferryman.toml: cache.mode: must be one of 'off', 'deterministic', 'all' (got 'sometimes')

Values are echoed only when short and not in a key, URL or secret field, so that a secret put
in the wrong place is not printed. :mod:`ferryman.config` raises these; command lines print
them and exit 2. The class itself is :class:`ferryman.errors.SettingsError` (also importable
from here and from :mod:`ferryman.config`).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from ferryman.errors import SettingsError

PREFIX = "FERRYMAN_"
CONFIG_ENV = "FERRYMAN_CONFIG"
DEFAULT_FILE = "ferryman.toml"
KEYWORDS = "keyword overrides"  # the source named for ``load(**overrides)`` / ``Settings(...)``

# FERRYMAN_* variables that are not settings but are read elsewhere. Variables named by an
# ``env:NAME`` secret reference in the loaded settings are allowed as well.
RUNTIME_VARIABLES = frozenset(
    {
        CONFIG_ENV,  # the settings file
        "FERRYMAN_DATA_DIR",  # the data directory (config.default_data_dir)
        "FERRYMAN_ADMIN_KEY",  # gateway.admin_key's default reference
        "FERRYMAN_AUDIT_KEY",  # the documented audit.checkpoint_key reference
        "FERRYMAN_EMBEDDED_MOCK_KEY",  # ferryman serve's embedded mock (gateway.serve_cli)
        "FERRYMAN_MOCK_KEYS",  # ferryman mock --keys
        "FERRYMAN_MOCK_TODAY",  # the date the mock acts on (ferryman mock --today, MockSettings.today)
        "FERRYMAN_LINT_CORPUS",  # where scripts/lint_corpus.py keeps the downloaded sdists
        "FERRYMAN_LOOP",  # asyncio instead of uvloop (ferryman._loop)
    }
)
# Set by the test suite, CI and the benchmarks while settings are loaded in the same environment.
TOOLING_VARIABLES = frozenset(
    {
        "FERRYMAN_REQUIRE_SERVICES",
        "FERRYMAN_KEEP_SCREENSHOTS",
        "FERRYMAN_TEST_POSTGRES",
        "FERRYMAN_TEST_REDIS",
        "FERRYMAN_TEST_UPSTREAM_KEY",
        "FERRYMAN_TEST_ADMIN_KEY",
        "FERRYMAN_TEST_CHECKPOINT",
        "FERRYMAN_BENCH_UPSTREAM_KEY",
        "FERRYMAN_BUDGET_WORKER",
    }
)
ALLOWED_VARIABLES = RUNTIME_VARIABLES | TOOLING_VARIABLES

_SECRETISH = re.compile(r"key|secret|token|password|url", re.IGNORECASE)  # values never echoed
_MAX_ECHO = 60


class KeyedError(ValueError):
    """Raised by a model validator about the setting at ``loc`` (``("store", "shared")``), so
    that the error names the source of that setting."""

    def __init__(self, loc: tuple[str, ...], message: str) -> None:
        self.loc = loc
        super().__init__(message)


# -- the file -----------------------------------------------------------------------------------


def config_file() -> tuple[str, bool]:
    """The settings file as named (``FERRYMAN_CONFIG``, else ``ferryman.toml``), and whether it
    was named explicitly (then it must exist)."""
    named = os.environ.get(CONFIG_ENV)
    return (named, True) if named else (DEFAULT_FILE, False)


def check_config_file() -> None:
    path, explicit = config_file()
    if explicit and not Path(path).expanduser().exists():  # ~ expanded, as pydantic-settings does
        raise SettingsError(f"{path}: no such settings file (named by {CONFIG_ENV})", path)
    if explicit and not Path(path).expanduser().is_file():
        raise SettingsError(f"{path}: not a file (named by {CONFIG_ENV} as the settings file)", path)


def read_toml(path: Path, label: str) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except tomllib.TOMLDecodeError as error:
        text = str(error)
        where = re.search(r"\(at line (\d+), column (\d+)\)", text)
        what = text[: where.start()].strip() if where else text
        at = f"line {where[1]}, column {where[2]}: " if where else ""
        raise SettingsError(f"{label}: {at}not valid TOML: {what}", label) from None
    except UnicodeDecodeError:
        raise SettingsError(f"{label}: not valid TOML: the file is not UTF-8", label) from None
    except OSError as error:
        raise SettingsError(f"{label}: cannot read the settings file ({error.strerror or error})", label) from None


def _file_data() -> tuple[str, dict[str, Any]]:
    label, _ = config_file()
    path = Path(label).expanduser()
    try:
        return label, read_toml(path, label) if path.is_file() else {}
    except SettingsError:
        return label, {}


# -- the model's shape --------------------------------------------------------------------------


def _unwrap(annotation: Any) -> Any:
    """``X | None`` and ``Annotated[X, ...]`` → ``X``."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _model(annotation: Any) -> type[BaseModel] | None:
    annotation = _unwrap(annotation)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _at(root: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    """The annotation of the value at ``loc`` (``None`` when the path leaves the model)."""
    annotation: Any = root
    for part in loc:
        annotation = _unwrap(annotation)
        model, origin = _model(annotation), get_origin(annotation)
        if model is not None and isinstance(part, str) and part in model.model_fields:
            annotation = model.model_fields[part].annotation
        elif origin is list and isinstance(part, int):
            annotation = get_args(annotation)[0]
        elif origin is dict and isinstance(part, str):
            annotation = get_args(annotation)[1]
        else:
            return None
    return annotation


def _env_names(model: type[BaseModel], path: tuple[str, ...] = ()) -> Iterator[str]:
    """Every setting as a variable name, without the prefix: ``CACHE``, ``CACHE__MODE``, …"""
    for name, field in model.model_fields.items():
        yield "__".join((*path, name)).upper()
        inner = _model(field.annotation)
        if inner is not None:
            yield from _env_names(inner, (*path, name))


def _is_setting(root: type[BaseModel], parts: list[str]) -> bool:
    """Whether pydantic-settings reads the variable with these lowercased parts: each part a
    field of a nested model; below a dict-typed field any key goes (``ROUTING__ALIASES__FAST``)."""
    annotation: Any = root
    for part in parts:
        annotation = _unwrap(annotation)
        model = _model(annotation)
        if model is None:
            return get_origin(annotation) is dict
        if part not in model.model_fields:
            return False
        annotation = model.model_fields[part].annotation
    return True


def _parts(name: str) -> list[str]:
    return name[len(PREFIX) :].lower().split("__")


def _prefixed(environ: Mapping[str, str]) -> list[str]:
    return sorted(name for name in environ if name.upper().startswith(PREFIX))


def _nearest(word: str, candidates: list[str]) -> str:
    found = difflib.get_close_matches(word, candidates, n=1)
    return found[0] if found else ""


def _env_suggestion(root: type[BaseModel], name: str, extra: frozenset[str] = frozenset()) -> str:
    candidates = [*_env_names(root), *(n[len(PREFIX) :] for n in extra if n.upper().startswith(PREFIX))]
    found = _nearest(name[len(PREFIX) :].upper(), candidates)
    return PREFIX + found if found else ""


def dotted(loc: tuple[Any, ...]) -> str:
    """``("deployments", 0, "weight")`` → ``deployments[0].weight``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# -- the environment ----------------------------------------------------------------------------


def _references(value: Any) -> Iterator[str]:
    """The variable names of the ``env:NAME`` secret references anywhere in ``value``."""
    if isinstance(value, str) and value.startswith("env:"):
        yield value[len("env:") :]
    elif isinstance(value, dict):
        for item in value.values():
            yield from _references(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _references(item)


def check_environment(settings: BaseModel, environ: Mapping[str, str] | None = None) -> None:
    """Refuse a ``FERRYMAN_*`` variable that is neither a setting, nor on the allow-list, nor
    named by a secret reference of ``settings`` (pydantic-settings would silently ignore it)."""
    environ = os.environ if environ is None else environ
    root = type(settings)
    references = frozenset(_references(settings.model_dump()))
    for name in _prefixed(environ):
        if name.upper() in ALLOWED_VARIABLES or name in references or _is_setting(root, _parts(name)):
            continue
        suggestion = _env_suggestion(root, name, RUNTIME_VARIABLES | references)
        hint = f" (did you mean {suggestion}?)" if suggestion else ""
        raise SettingsError(f"{name}: unknown setting{hint}", name, "", suggestion)


def from_source_error(
    error: Exception, root: type[BaseModel], environ: Mapping[str, str] | None = None
) -> SettingsError:
    """pydantic-settings' "error parsing value for field" (a table or list variable that is not
    JSON), naming the variable."""
    environ = os.environ if environ is None else environ
    field = re.search(r'field "([^"]+)"', str(error))
    for name in _prefixed(environ):
        parts = _parts(name)
        if not field or parts[0] != field[1]:
            continue
        annotation = _unwrap(_at(root, tuple(parts)))
        model, origin = _model(annotation), get_origin(annotation)
        if model is None and origin not in (list, dict):
            continue
        try:
            json.loads(environ[name])
        except ValueError:
            pass
        else:
            continue
        if model is not None:
            first = next(iter(model.model_fields), "")
            what = f"a JSON object (or one variable per key, such as {name.upper()}__{first.upper()})"
        else:
            what = "a JSON array" if origin is list else "a JSON object"
        key = dotted(tuple(parts))
        return SettingsError(f"{name}: must be {what}, and is not valid JSON", name, key)
    return SettingsError(f"environment: {error}", "environment")


# -- pydantic's errors --------------------------------------------------------------------------


def _depth(data: Any, loc: tuple[Any, ...]) -> int:
    """How much of ``loc`` the (nested) ``data`` has."""
    depth = 0
    for part in loc:
        keyed = isinstance(data, dict) and isinstance(part, str) and part in data
        indexed = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if not (keyed or indexed):
            break
        data = data[part]
        depth += 1
    return depth


class _Sources:
    """Where each setting came from: keyword overrides, then variables, then the file."""

    def __init__(self, overrides: Mapping[str, Any], environ: Mapping[str, str]) -> None:
        self.overrides = dict(overrides)
        self.variables = [(name, _parts(name)) for name in _prefixed(environ)]
        self.file, self.file_data = _file_data()

    def of(self, loc: tuple[Any, ...]) -> tuple[str, list[str] | None]:
        """The source that gave ``loc`` (its label, and for a variable its lowercased parts)."""
        best: tuple[int, int, str, list[str] | None] = (0, 0, "", None)
        for depth, rank, label, parts in self._candidates(loc):
            best = max(best, (depth, rank, label, parts), key=lambda c: (c[0], c[1]))
        if best[0]:
            return best[2], best[3]
        if self.overrides:
            return KEYWORDS, None
        return self.file if self.file_data else "settings", None

    def _candidates(self, loc: tuple[Any, ...]) -> Iterator[tuple[int, int, str, list[str] | None]]:
        yield _depth(self.overrides, loc), 3, KEYWORDS, None
        for name, parts in self.variables:
            if [str(p) for p in loc[: len(parts)]] == parts:
                yield len(parts), 2, name, parts
        yield _depth(self.file_data, loc), 1, self.file, None


def _echo(error: Mapping[str, Any]) -> str:
    """`` (got 'sometimes')`` — or nothing, for a long, structured or secret-looking value."""
    value = error.get("input")
    names = [p for p in error["loc"] if isinstance(p, str)]
    if isinstance(value, dict | list | tuple) or (names and _SECRETISH.search(names[-1])):
        return ""
    text = repr(value)
    return f" (got {text})" if len(text) <= _MAX_ECHO else ""


def _problem(error: Mapping[str, Any]) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "missing":
        return "required, and not set"
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    if kind == "literal_error":
        head, _, last = str(ctx.get("expected", "")).rpartition(" or ")
        choices = f"{head}, {last}" if head else last
        return f"must be one of {choices}{_echo(error)}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a table{_echo(error)}"
    if kind == "list_type":
        return f"must be a list{_echo(error)}"
    message = str(error["msg"])
    if message.startswith("Input should be"):
        message = "must be" + message[len("Input should be") :]
    elif message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    else:
        message = message[:1].lower() + message[1:]
    return message + _echo(error)


def _one(error: Mapping[str, Any], root: type[BaseModel], sources: _Sources) -> SettingsError:
    loc: tuple[Any, ...] = tuple(error["loc"])
    keyed = (error.get("ctx") or {}).get("error")
    if isinstance(keyed, KeyedError):
        loc = keyed.loc
    source, parts = sources.of(loc)
    exact = parts is not None and len(parts) == len(loc)  # the variable names the key itself
    key = dotted(loc)
    if error["type"] == "extra_forbidden":
        if exact:
            suggestion = _env_suggestion(root, source)
            hint = f" (did you mean {suggestion}?)" if suggestion else ""
            return SettingsError(f"{source}: unknown setting{hint}", source, key, suggestion)
        parent = _model(_at(root, loc[:-1]))
        near = _nearest(str(loc[-1]), list(parent.model_fields)) if parent else ""
        suggestion = dotted((*loc[:-1], near)) if near else ""
        hint = f" (did you mean {suggestion}?)" if suggestion else ""
        return SettingsError(f"{source}: unknown setting {key}{hint}", source, key, suggestion)
    problem = _problem(error)
    if isinstance(keyed, KeyedError) or not key or exact:
        return SettingsError(f"{source}: {problem}", source, key)
    return SettingsError(f"{source}: {key}: {problem}", source, key)


def from_validation(
    error: ValidationError,
    root: type[BaseModel],
    overrides: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
) -> SettingsError:
    """The first of pydantic's errors as one line naming its source, with a count of the rest."""
    sources = _Sources(overrides, os.environ if environ is None else environ)
    errors = error.errors(include_url=False)
    first = _one(errors[0], root, sources)
    if len(errors) > 1:
        more = len(errors) - 1
        first = SettingsError(
            f"{first.message} (and {more} more {'problem' if more == 1 else 'problems'})",
            first.source,
            first.key,
            first.suggestion,
        )
    return first
