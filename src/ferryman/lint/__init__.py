"""``ferryman lint``: a static audit of Python code that calls the OpenAI API.

Why static: the failures it finds (a model id past its shutdown date, ``max_tokens`` sent to a
reasoning model, a client with no timeout, retries nested in retries, a key in the source) are
cheapest to fix before the code runs, and are found the same way in CI, in a pre-commit hook and in
an editor. The model knowledge (dates, successors, which models reason, which parameters they
reject, which APIs retire) is :mod:`ferryman.catalogue`'s, the same table the pipeline and
``ferryman doctor`` read, so the three never disagree.

Layout: :mod:`.scan` walks a module's ``ast`` once for facts; :mod:`.values` propagates constants;
:mod:`.calls` recognises SDK calls and clients; :mod:`.checks` and :mod:`.retries` are the rules
(codes in :mod:`.rules`, documented in ``docs/lint-rules.md``); :mod:`.engine` finds files, runs
the rules, applies ``# ferryman: noqa``; :mod:`.fix` rewrites with libcst; :mod:`.report` prints
text, JSON or SARIF; :mod:`.config` reads ``[tool.ferryman.lint]``; :mod:`.cli` is the command.
"""

from __future__ import annotations

from ferryman.lint.config import Options
from ferryman.lint.engine import lint_files, lint_source
from ferryman.lint.result import Edit, FileResult, Finding, ParseError
from ferryman.lint.rules import RULES, Rule, enabled

__all__ = [
    "RULES", "Edit", "FileResult", "Finding", "Options", "ParseError", "Rule", "enabled", "lint_files", "lint_source",
]  # fmt: skip
