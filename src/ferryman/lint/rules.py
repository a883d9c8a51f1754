"""The rules of ``ferryman lint``: stable codes, what each finds, how to fix it, where it is documented.

The codes are a public interface: they appear in ``# ferryman: noqa[CODE]`` comments, in
``--select``/``--ignore`` and ``[tool.ferryman.lint]`` of users' repositories and in SARIF uploads, so
a code is never renumbered or reused. Each rule has a section in ``docs/lint-rules.md``; the anchor of
its heading (``## FM101 retired-model`` → ``#fm101-retired-model``) is the ``url`` of its findings.

Selection follows ruff: a selector is a code, a prefix of codes (``FM1``, ``FM``) or ``ALL``; the most
specific matching selector wins, and on a tie ``ignore`` beats ``select``. Rules marked opt-in
(``default=False``) run only when a selector names them (``FM801``, ``FM8``, ``FM`` or ``ALL``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# The rules' docs page, as a path in Ferryman's repository (the project has no published site
# yet: the docs-site issue gives it one, and then this becomes its absolute URL). Text and JSON
# output name ``docs/lint-rules.md#fm201-…``; SARIF, whose ``helpUri`` must be an absolute URI,
# links the file itself where it exists (a source checkout) and omits the link elsewhere.
DOCS_URL = "docs/lint-rules.md"


@dataclass(frozen=True)
class Rule:
    code: str
    name: str  # kebab-case, also the docs anchor's tail
    summary: str  # one line: what the rule finds
    hint: str  # one line: the general fix
    level: str = "warning"  # SARIF level: "error" for calls that fail, "warning" otherwise
    fix: str | None = None  # "safe" (--fix), "unsafe" (--fix --unsafe-fixes) or "models" (--fix-models)
    default: bool = True  # False: opt-in, runs only when selected by name or prefix

    @property
    def url(self) -> str:
        return f"{DOCS_URL}#{self.code.lower()}-{self.name}"


RULES: tuple[Rule, ...] = (
    Rule("FM101", "retired-model", "A model id whose shutdown date has passed: calls with it fail.",
         "Use the successor model the message names (`--fix-models` rewrites the literal).",
         level="error", fix="models"),
    Rule("FM102", "retiring-model", "A model id that shuts down within the window (default 180 days).",
         "Move to the successor before the date (`--fix-models` rewrites the literal).", fix="models"),
    Rule("FM201", "max-tokens-on-reasoning-model",
         "`max_tokens` in a Chat Completions call to a reasoning model: the API answers 400.",
         "Use `max_completion_tokens` (it also counts reasoning tokens).", level="error", fix="safe"),
    Rule("FM202", "max-tokens-on-responses",
         "`max_tokens` in a Responses API call: the SDK has no such parameter (TypeError).",
         "Use `max_output_tokens`.", level="error", fix="safe"),
    Rule("FM203", "sampling-on-reasoning-model",
         "A non-default `temperature` or `top_p` sent to a reasoning model: the API answers 400.",
         "Remove it; families that allow sampling do so only with reasoning effort \"none\".", level="error"),
    Rule("FM301", "legacy-sdk", "The 0.x SDK (`openai.ChatCompletion.create`, `openai.error`), removed in 1.0.",
         "Build a client: `client = OpenAI()`, then `client.chat.completions.create(...)`.", level="error"),
    Rule("FM302", "module-level-config",
         "Module-level configuration (`openai.api_key = ...`): the 0.x style, a process-wide global.",
         "Pass the setting to the client: `OpenAI(api_key=..., base_url=...)`."),
    Rule("FM303", "deprecated-functions", "`functions`/`function_call` in a chat call: deprecated in the API.",
         "Use `tools=[{\"type\": \"function\", \"function\": {...}}]` and `tool_choice`."),
    Rule("FM401", "retiring-api", "A call to an API that shuts down (the Assistants API, Evals, Videos...).",
         "Move to the successor the message names before the date."),
    Rule("FM501", "client-without-timeout",
         "An SDK client built without `timeout=`: each attempt may wait 600 s (the SDK's default).",
         "Pass `timeout=` (seconds, or `httpx2.Timeout`) to the client, or build it with `ferryman.OpenAI()`."),
    Rule("FM502", "retries-multiply", "An SDK call under an outer retry (tenacity, backoff, a retry loop): "
         "the SDK's own retries multiply the attempts.",
         "Set `max_retries=0` on the client used inside the outer retry, or drop the outer retry."),
    Rule("FM601", "hard-coded-key", "An API key written in the source.",
         "Read it from the environment (`OPENAI_API_KEY`) or a secret store; revoke the key that leaked.",
         level="error"),
    Rule("FM701", "stream-without-usage",
         "A Chat Completions stream without `stream_options={\"include_usage\": True}`: no token counts.",
         "Add `stream_options={\"include_usage\": True}`; the last chunk then has `choices == []`.", fix="unsafe"),
    Rule("FM801", "unhandled-api-errors",
         "An API call with no handler for rate-limit or API errors in its function.",
         "Catch `openai.RateLimitError`/`openai.APIError`, or retry with tenacity/backoff.", default=False),
)  # fmt: skip

BY_CODE: dict[str, Rule] = {rule.code: rule for rule in RULES}


class SelectorError(ValueError):
    """A selector that names no rule (a typo would otherwise select nothing, silently)."""


def _specificity(code: str, selector: str) -> int:
    """How specifically ``selector`` names ``code`` (its length; ``ALL`` is 0), or -1 if it does not."""
    if selector == "ALL":
        return 0
    return len(selector) if code.startswith(selector) else -1


def check_selectors(selectors: Iterable[str]) -> list[str]:
    """``selectors`` upper-cased; raises :class:`SelectorError` for one that matches no rule."""
    out = []
    for raw in selectors:
        selector = raw.strip().upper()
        if not selector:
            continue
        known = selector.startswith("FM") and any(rule.code.startswith(selector) for rule in RULES)
        if selector != "ALL" and not known:
            raise SelectorError(f"unknown rule selector {raw!r} (codes are FM101...; see `ferryman lint --help`)")
        out.append(selector)
    return out


def enabled(
    select: Iterable[str] | None, extend_select: Iterable[str] = (), ignore: Iterable[str] = ()
) -> frozenset[str]:
    """The codes that run. ``select=None`` is the default set (every rule not marked opt-in)."""
    chosen = check_selectors(select) if select is not None else None
    extra, ignored = check_selectors(extend_select), check_selectors(ignore)
    codes = set()
    for rule in RULES:
        if chosen is None:
            picked = 0 if rule.default else -1
        else:
            picked = max((_specificity(rule.code, s) for s in chosen), default=-1)
        picked = max([picked, *(_specificity(rule.code, s) for s in extra)])
        dropped = max((_specificity(rule.code, s) for s in ignored), default=-1)
        if picked >= 0 and picked > dropped:
            codes.add(rule.code)
    return frozenset(codes)


def matches_any(code: str, selectors: Iterable[str]) -> bool:
    return any(_specificity(code, s) >= 0 for s in selectors)
