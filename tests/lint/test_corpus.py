"""``ferryman lint`` over real code (openai, openai-agents, langchain-openai, fetched from PyPI by
``scripts/lint_corpus.py``): no crash, no file it cannot parse, and exactly the reviewed findings of
``corpus_snapshot.txt``. Slow the first time (the download, ~13 MB, is cached); it always runs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _corpus_module():
    spec = importlib.util.spec_from_file_location("lint_corpus", ROOT / "scripts" / "lint_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["lint_corpus"] = module
    spec.loader.exec_module(module)
    return module


corpus = _corpus_module()


@pytest.fixture(scope="module")
def cache() -> Path:
    return corpus.fetch()


def test_the_findings_are_the_reviewed_ones(cache):
    found, errors, lines = corpus.lint(cache)
    assert errors == []
    assert lines > 400_000
    note, expected = corpus.read_snapshot()
    assert note, "the snapshot must keep its review note"
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    assert (missing, extra) == ([], []), (
        "the corpus findings changed: review each and run `python scripts/lint_corpus.py --update`"
    )
    assert found == expected


def test_every_rule_including_the_opt_in_ones_runs_without_error(cache):
    found, errors, _ = corpus.lint(cache, ["ALL"])
    assert errors == []
    assert any(" FM801 " in line for line in found)
