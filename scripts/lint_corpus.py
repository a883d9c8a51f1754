"""``ferryman lint`` on real code nobody here wrote: the source distributions of ``openai``,
``openai-agents`` and ``langchain-openai``, fetched from PyPI at run time.

    python scripts/lint_corpus.py              lint the corpus, compare with the reviewed snapshot
    python scripts/lint_corpus.py --print      print the findings (path:line:col: CODE message)
    python scripts/lint_corpus.py --update     rewrite the snapshot's findings, keeping its review note
    python scripts/lint_corpus.py --select ALL also the opt-in rules (not for --update)

Why: rules tested only on code written to test them drift into false positives; these three code
bases are large, idiomatic and full of OpenAI calls. Every finding in
``tests/lint/corpus_snapshot.txt`` was read and judged; a false positive is fixed in the rules, never
kept in the snapshot. ``tests/lint/test_corpus.py`` runs this in the suite and
``benchmarks/lint_speed.py`` times the linter on the same files.

Versions are pinned (with their sha256), dates are judged as of :data:`TODAY`, so the snapshot
changes only when the rules or the catalogue do. The sdists are kept in ``$FERRYMAN_LINT_CORPUS``
(default: the user cache directory) and downloaded with ``pip download --no-deps --no-binary :all:``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = ROOT / "tests" / "lint" / "corpus_snapshot.txt"
TODAY = dt.date(2026, 12, 4)


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    sha256: str
    dirs: tuple[str, ...]  # what is linted: the sources and the examples, not the tests

    @property
    def folder(self) -> str:
        return f"{self.name.replace('-', '_')}-{self.version}"


PACKAGES = (
    Package("openai", "3.60.0", "077657587f7d2d55b943a135c3e183f87cf7dc66644caa3c0bbc2bde1fe65de9",
            ("src", "examples")),
    Package("openai-agents", "0.24.0", "4b4b285f4fed81fdf1b4ac426a9101658d9cd29b4fb1aaeee18f639b77e704e3",
            ("src", "examples")),
    Package("langchain-openai", "1.8.1", "d046911c1cd88e36005090ae47dbd5883deb2991657376ee9c1a9f69fa1f0bac",
            ("langchain_openai",)),
)  # fmt: skip


def cache_dir() -> Path:
    found = os.environ.get("FERRYMAN_LINT_CORPUS")
    if found:
        return Path(found)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("ferryman")) / "lint-corpus"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(cache: Path | None = None) -> Path:
    """Download (once) and unpack the pinned sdists; returns the directory holding them."""
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    for package in PACKAGES:
        if (cache / package.folder / ".unpacked").is_file():
            continue
        archive = cache / f"{package.folder}.tar.gz"
        if not archive.is_file() or _sha256(archive) != package.sha256:
            done = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
                 "--no-binary", ":all:", "--dest", str(cache), f"{package.name}=={package.version}"],
                capture_output=True, text=True,
            )  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(f"pip download {package.name}=={package.version} failed:\n{done.stderr}")
        if _sha256(archive) != package.sha256:
            raise RuntimeError(f"{archive.name}: sha256 {_sha256(archive)}, expected {package.sha256}")
        with tarfile.open(archive) as tar:
            tar.extractall(cache, filter="data")
        (cache / package.folder / ".unpacked").write_text(package.sha256)
    return cache


def roots(cache: Path) -> list[str]:
    return [str(cache / p.folder / d) for p in PACKAGES for d in p.dirs if (cache / p.folder / d).is_dir()]


def files(cache: Path) -> list[str]:
    from ferryman.lint.config import DEFAULT_EXCLUDE, Excluder
    from ferryman.lint.engine import discover

    found, missing = discover(roots(cache), Excluder(DEFAULT_EXCLUDE, cache))
    if missing:
        raise RuntimeError(f"corpus folders missing: {[m.path for m in missing]}")
    return found


def lint(cache: Path, select: list[str] | None = None, jobs: int = 0) -> tuple[list[str], list[str], int]:
    """(finding lines, error lines, lines of code), paths relative to ``cache``."""
    from ferryman.lint.config import Options
    from ferryman.lint.engine import lint_files
    from ferryman.lint.rules import enabled

    options = Options(enabled(select), TODAY)
    results = lint_files(files(cache), options, jobs)

    def rel(path: str) -> str:
        return Path(os.path.relpath(path, cache)).as_posix()

    ordered = sorted(results, key=lambda r: rel(r.path))  # findings in a file are in line order already
    found = [f"{rel(f.path)}:{f.line}:{f.col + 1}: {f.code} {f.message}" for r in ordered for f in r.findings]
    errors = [f"{rel(r.error.path)}:{r.error.line}: {r.error.message}" for r in ordered if r.error]
    return found, errors, sum(r.lines for r in results)


def read_snapshot(path: Path = SNAPSHOT) -> tuple[list[str], list[str]]:
    """(the review note: the leading ``#`` lines, the finding lines)."""
    note: list[str] = []
    findings: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") and not findings:
            note.append(line)
        elif line.strip() and not line.startswith("#"):
            findings.append(line)
    return note, findings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lint_corpus.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true", help="rewrite the snapshot's findings")
    parser.add_argument("--print", dest="show", action="store_true", help="print the findings")
    parser.add_argument("--select", action="append", help="rule selectors (default: the default rules)")
    parser.add_argument("--cache", type=Path, help="where the sdists are kept")
    args = parser.parse_args(argv)
    cache = fetch(args.cache)
    found, errors, lines = lint(cache, args.select)
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if args.show:
        print("\n".join(found))
    if args.update:
        if args.select:
            parser.error("--update takes the default rules only")
        note, _ = read_snapshot() if SNAPSHOT.is_file() else ([], [])
        SNAPSHOT.write_text("\n".join([*note, *found]) + "\n", encoding="utf-8")
        print(f"{SNAPSHOT.relative_to(ROOT)}: {len(found)} findings written; review each one", file=sys.stderr)
        return 0
    print(f"{len(found)} findings, {len(errors)} errors in {lines} lines", file=sys.stderr)
    if args.select:
        return 1 if errors else 0
    _, expected = read_snapshot()
    if found != expected:
        missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        for line in missing:
            print(f"- {line}")
        for line in extra:
            print(f"+ {line}")
        return 1
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
