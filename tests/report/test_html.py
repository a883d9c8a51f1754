"""``ferryman report --format html`` opened offline in headless Chromium (Playwright, as the dashboard is).

A report is built from audit rows written here (two weeks, three models, two keys, one spike day,
errors and a 429), rendered to a file and opened from its ``file://`` path with every other
request aborted; the test asserts none was even tried. Then the page is read as a person would:
the tiles hold the figures summed here from the rows (not by the report's code), every chart has
one bar per data point and bars sized by their amounts, a screenshot holds about as many pixels of
the bar colour as the bars cover, hostile model, key and tag names show as text, and no script
runs or fails. ``FERRYMAN_KEEP_SCREENSHOTS=DIR`` keeps the sample's full-page screenshot as
``DIR/report-example.png`` (the README's picture: ``FERRYMAN_KEEP_SCREENSHOTS=docs``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from typer.testing import CliRunner

from ferryman.cli import app
from ferryman.report import query
from ferryman.report.build import build
from ferryman.report.render_html import BAR, SPIKE, to_html
from ferryman.store.database import make_engine, migrate
from tests.chromium import CHROMIUM, count_colour, palette_png, png_pixels, require_chromium
from tests.report.conftest import records, synthetic, totals, write

DAY = 86_400
START = dt.datetime(2025, 11, 21, tzinfo=dt.UTC).timestamp()
END = dt.datetime(2025, 12, 5, tzinfo=dt.UTC).timestamp()  # 14 UTC days; the build's "now"
BAR_RGB = tuple(int(BAR[i : i + 2], 16) for i in (1, 3, 5))
SPIKE_RGB = tuple(int(SPIKE[i : i + 2], 16) for i in (1, 3, 5))
KEYS = [{"id": "key_aaaaaaaaaaaa", "name": "search-prod", "team": "search"},
        {"id": "key_bbbbbbbbbbbb", "name": "batch-jobs", "team": None}]  # fmt: skip
XSS_MODEL = '<img src=x onerror="window.pwned=1">'
XSS_KEY = "<script>window.pwned=2</script>"
XSS_TAG = '"><svg onload="window.pwned=3">'
BARS = """sel => [...document.querySelectorAll(sel + ' rect.bar')].map(r => {
  const b = r.getBoundingClientRect();
  return {w: b.width, h: b.height, title: r.querySelector('title').textContent, day: r.dataset.day || null};
})"""


def sample_rows() -> list[dict[str, Any]]:
    """Twelve days of calls on three models and two keys (and SDK calls), with errors, a 429 and
    one day (2025-11-28) at many times the others' spend."""
    rows = []
    for n in range(12):
        day = START + (n + 2) * DAY
        for i in range(3):
            rows.append(synthetic(ts=day + 600 * i, model="gpt-4.1", principal="key_aaaaaaaaaaaa", input_tokens=1_200,
                                  output_tokens=300, cost_usd=Decimal("0.0048") + Decimal(n) / 10_000,
                                  latency_ms=900.0 + 40 * i + n, tags={"feature": "search"}))  # fmt: skip
        for i in range(5):
            rows.append(synthetic(ts=day + 3_600 + 60 * i, model="gpt-4o-mini", principal="key_bbbbbbbbbbbb",
                                  input_tokens=800, cached_tokens=200, output_tokens=100,
                                  cost_usd=Decimal("0.000165"), latency_ms=400.0 + 10 * i,
                                  tags={"feature": "summarise"}))  # fmt: skip
        rows.append(synthetic(ts=day + 7_200, model="text-embedding-3-small", endpoint="/embeddings",
                              input_tokens=500, cost_usd=Decimal("0.00001"), latency_ms=80.0))  # fmt: skip
        if n % 4 == 1:
            rows.append(synthetic(ts=day + 9_000, model="gpt-4.1", principal="key_aaaaaaaaaaaa", status=429,
                                  latency_ms=5.0))  # fmt: skip
        if n % 5 == 2:
            rows.append(synthetic(ts=day + 9_500, model="gpt-4o-mini", principal="key_bbbbbbbbbbbb", status=500,
                                  latency_ms=30_000.0))  # fmt: skip
        if n == 5:  # 2025-11-28: a batch job sent live
            rows += [synthetic(ts=day + 40_000 + i, model="gpt-4.1", principal="key_bbbbbbbbbbbb", input_tokens=6_000,
                               output_tokens=1_500, cost_usd=Decimal("0.024"), latency_ms=2_500.0,
                               tags={"feature": "backfill"}) for i in range(12)]  # fmt: skip
    return rows


def build_report(url: str, rows: list[dict[str, Any]], keys: list[dict[str, Any]], by: tuple[str, ...]) -> Any:
    engine = make_engine(url)
    migrate(engine)
    write(engine, rows, keys)
    stored = records(engine)
    with engine.connect() as conn:
        made = build(conn, query.Filters(START, END), by, now=END)
    engine.dispose()
    return made, stored


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    require_chromium("HTML report")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


class Opened:
    """A report file open in a tab that may fetch nothing but the file itself."""

    def __init__(self, page: Page, url: str, requested: list[str], blocked: list[str]) -> None:
        self.page, self.url, self.requested, self.blocked = page, url, requested, blocked


@pytest.fixture
def open_report(browser: Browser) -> Iterator[Any]:
    """Write the HTML to a file and open it offline; on teardown, assert no request but the file's,
    no script error and no console error (a CSP violation logs one)."""
    contexts: list[Any] = []
    problems: list[str] = []
    opened: list[Opened] = []

    def opener(html: str, path: Path) -> Opened:
        path.write_text(html, encoding="utf-8")
        url = path.resolve().as_uri()
        context = browser.new_context(viewport={"width": 1280, "height": 1000}, device_scale_factor=1)
        contexts.append(context)
        requested: list[str] = []
        blocked: list[str] = []

        def guard(route: Any) -> None:
            if route.request.url == url:
                route.continue_()
            else:
                blocked.append(route.request.url)
                route.abort()

        context.route("**/*", guard)
        page = context.new_page()
        page.on("request", lambda request: requested.append(request.url))
        page.on("pageerror", lambda error: problems.append(f"pageerror: {error}"))
        page.on("console", lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None)
        page.goto(url)
        page.wait_for_load_state("load")
        done = Opened(page, url, requested, blocked)
        opened.append(done)
        return done

    yield opener
    for done in opened:
        assert done.requested == [done.url] and not done.blocked, (done.requested, done.blocked)
    for context in contexts:
        context.close()
    assert not problems, problems


def dollars(text: str) -> Decimal:
    return Decimal(text.strip().replace("$", "").replace(",", ""))


def shown_as(text: str, exact: Decimal) -> bool:
    """``$0.2345`` shows ``exact`` when they differ by at most half a unit of its last digit."""
    shown = dollars(text)
    return abs(shown - exact) <= Decimal(1).scaleb(shown.as_tuple().exponent) / 2  # type: ignore[arg-type]


def by_day(rows: list[dict[str, Any]]) -> dict[str, Decimal]:
    days: dict[str, Decimal] = {}
    for r in rows:
        day = dt.datetime.fromtimestamp(r["ts"], dt.UTC).date().isoformat()
        days[day] = days.get(day, Decimal(0)) + Decimal(r["cost_usd"])
    return {day: cost for day, cost in sorted(days.items()) if cost > 0}


def sums(rows: list[dict[str, Any]], field: str) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for r in rows:
        out[r[field]] = out.get(r[field], Decimal(0)) + Decimal(r["cost_usd"])
    return {k: v for k, v in out.items() if v > 0}


def assert_sized(bars: list[dict[str, Any]], amounts: list[Decimal], along: str) -> None:
    """Each bar has a size, and its length along ``along`` is its amount's share of the largest (to 1 px)."""
    assert len(bars) == len(amounts) and all(b["w"] > 0 and b["h"] > 0 for b in bars), bars
    top, longest = max(amounts), max(b[along] for b in bars)
    for bar, amount in zip(bars, amounts, strict=True):
        assert abs(bar[along] - max(1.0, float(amount / top) * longest)) <= 1.01, (bar, amount)


# -- tests -----------------------------------------------------------------------------------


def test_offline_page_shows_the_reports_figures_and_every_chart(open_report, tmp_path):
    """Tiles equal the JSON and the rows' sums; one bar per day with spend, per model and per key,
    each sized by its amount; month, spikes and advice (in order) as the JSON has them."""
    made, stored = build_report(f"sqlite:///{tmp_path / 'r.db'}", sample_rows(), KEYS, ("key",))
    data = made.as_json()
    html = to_html(made)
    assert "<script" not in html.lower() and "http:" not in html and "https:" not in html
    tab = open_report(html, tmp_path / "report.html")
    page = tab.page
    assert page.title() == f"Ferryman report {data['period']['from']} to {data['period']['to']}"

    expected = totals(stored)
    tiles = {
        el.get_attribute("data-stat"): (el.get_attribute("data-value"), el.locator(".value").inner_text())
        for el in page.locator("#totals .tile").all()
    }
    assert Decimal(tiles["cost_usd"][0]) == expected["cost_usd"] == Decimal(data["totals"]["cost_usd"])
    assert shown_as(tiles["cost_usd"][1], expected["cost_usd"]), tiles["cost_usd"]
    counts = ("requests", "input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens", "errors")
    for name in (*counts, "rate_limited"):
        assert int(tiles[name][0]) == int(tiles[name][1].replace(",", "")) == expected[name] == data["totals"][name]
    for name, rank in (("latency_p50_ms", "p50"), ("latency_p95_ms", "p95")):
        assert float(tiles[name][0]) == expected[name] == data["totals"]["latency_ms"][rank]
        assert tiles[name][1] == f"{expected[name]:,.0f} ms"
    assert expected["errors"] >= 3 and expected["rate_limited"] == 3

    daily = by_day(stored)
    bars = page.evaluate(BARS, "#chart-daily")
    assert [b["day"] for b in bars] == list(daily)
    assert_sized(bars, list(daily.values()), "h")
    assert page.locator("#daily-table tbody tr").count() == len(daily)

    models = sorted(sums(stored, "model").items(), key=lambda kv: -kv[1])
    bars = page.evaluate(BARS, "#chart-by-model")
    assert [b["title"].rsplit(": ", 1)[0] for b in bars] == [m for m, _ in models]
    assert_sized(bars, [c for _, c in models], "w")
    assert all(shown_as(b["title"].rsplit(": ", 1)[1], cost) for b, (_, cost) in zip(bars, models, strict=True))

    names = {k["id"]: f"{k['name']} ({k['id']})" for k in KEYS} | {"anonymous": "anonymous"}
    keys = sorted(((names[k], v) for k, v in sums(stored, "principal").items()), key=lambda kv: -kv[1])
    bars = page.evaluate(BARS, "#chart-by-key")
    assert [b["title"].rsplit(": ", 1)[0] for b in bars] == [k for k, _ in keys]
    assert_sized(bars, [c for _, c in keys], "w")
    assert page.locator("#breakdown-table tbody tr").count() == len(keys)
    label = page.get_attribute("#chart-by-key", "aria-label")
    assert page.get_attribute("#chart-by-key", "role") == "img" and "search-prod" in label

    month = {el.get_attribute("data-stat"): el.get_attribute("data-value") for el in page.locator("#month .tile").all()}
    dec = dt.datetime(2025, 12, 1, tzinfo=dt.UTC).timestamp()
    to_date = sum((Decimal(r["cost_usd"]) for r in stored if dec <= r["ts"] < END), Decimal(0))
    assert Decimal(month["to_date_usd"]) == to_date == Decimal(data["month"]["to_date_usd"])
    assert month["projected_usd"] == data["month"]["projected_usd"]
    assert Decimal(month["projected_usd"]) == (to_date / 4 * 31).quantize(Decimal("1E-10"))

    assert [s["day"] for s in data["spikes"]] == ["2025-11-28"]
    assert page.locator("#spikes-table tbody td:first-child").all_inner_texts() == ["2025-11-28"]
    assert page.locator("#chart-daily path.spike").count() == 1

    items = page.locator("li.advice-item")
    assert items.count() == len(data["advice"]) >= 2
    for i, advice in enumerate(data["advice"]):
        item = items.nth(i)
        assert item.get_attribute("data-kind") == advice["kind"] and item.get_attribute("data-rank") == str(i + 1)
        assert item.get_attribute("data-savings") == advice["savings_usd"]
        assert item.locator("h3").inner_text() == advice["title"]
        assert item.locator(".action").inner_text() == advice["action"]
        assert advice["evidence"]["example_request_id"] in item.inner_text()
    savings = [Decimal(a["savings_usd"]) for a in data["advice"]]
    assert savings == sorted(savings, reverse=True)
    assert page.locator("h1").count() == 1 and page.locator("h2").count() >= 6


def test_charts_are_painted_and_the_screenshot_is_kept(open_report, tmp_path):
    """A screenshot of each chart holds about as many pixels of the bar colour as its bars cover in
    the layout. The full page's screenshot is kept with FERRYMAN_KEEP_SCREENSHOTS=DIR."""
    made, _ = build_report(f"sqlite:///{tmp_path / 'r.db'}", sample_rows(), KEYS, ("key",))
    page = open_report(to_html(made), tmp_path / "report.html").page
    for chart in ("chart-daily", "chart-by-model", "chart-by-key"):
        element = page.locator(f"#{chart}")
        shot = element.screenshot(path=str(tmp_path / f"{chart}.png"), animations="disabled")
        width, height, pixels = png_pixels(shot)
        box = element.bounding_box()
        assert box and abs(width - box["width"]) < 2 and abs(height - box["height"]) < 2, (width, height, box)
        painted = count_colour(pixels, BAR_RGB)  # type: ignore[arg-type]
        laid_out = sum(b["w"] * b["h"] for b in page.evaluate(BARS, f"#{chart}"))
        assert laid_out > 0 and 0.9 * laid_out < painted < 1.1 * laid_out + 50, (chart, painted, laid_out)
        assert painted / (width * height) > 0.01, (chart, painted, width * height)
    shot = tmp_path / "report-example.png"
    page.screenshot(path=str(shot), full_page=True)
    width, height, pixels = png_pixels(shot.read_bytes())
    assert count_colour(pixels, BAR_RGB) > 0.01 * width * height  # type: ignore[arg-type]
    keep = os.environ.get("FERRYMAN_KEEP_SCREENSHOTS")
    if keep:  # 256 colours, the bars' and the spike mark's kept exact: small enough for docs/
        small = palette_png(width, height, pixels, keep=(BAR_RGB, SPIKE_RGB))  # type: ignore[arg-type]
        Path(keep).mkdir(parents=True, exist_ok=True)
        (Path(keep) / shot.name).write_bytes(small)


def test_hostile_names_are_text_and_nothing_runs(open_report, tmp_path):
    """A model, a key name and a tag value made of HTML show as their text, in the charts and the
    tables, and run nothing; spend summed over a two-dimension breakdown per key and per tag."""
    keys = [{"id": "key_cccccccccccc", "name": XSS_KEY, "team": None}]
    rows = [
        synthetic(ts=START + DAY, model=XSS_MODEL, principal="key_cccccccccccc", cost_usd=Decimal("0.5"),
                  tags={"feature": XSS_TAG}),
        synthetic(ts=START + DAY, model="gpt-4o-mini", principal="key_cccccccccccc", cost_usd=Decimal("0.25"),
                  input_tokens=1_000, tags={"feature": "plain"}),
        synthetic(ts=START + 3 * DAY, model="gpt-4o-mini", cost_usd=Decimal("0.125"), tags={"feature": XSS_TAG}),
    ]  # fmt: skip
    made, _ = build_report(f"sqlite:///{tmp_path / 'r.db'}", rows, keys, ("key", "tag:feature"))
    html = to_html(made)
    for raw in (XSS_MODEL, XSS_KEY, XSS_TAG):
        assert raw not in html
    page = open_report(html, tmp_path / "hostile.html").page
    assert page.evaluate("window.pwned") is None
    assert page.locator("main img, main script, main svg svg").count() == 0
    assert XSS_MODEL in page.locator("#by-model-table").text_content()
    assert XSS_KEY in page.locator("#breakdown-table").inner_text() and XSS_TAG in page.inner_text("#breakdown-table")
    key_bars = page.evaluate(BARS, "#chart-by-key")
    assert [(b["title"]) for b in key_bars] == [f"{XSS_KEY} (key_cccccccccccc): $0.75", "anonymous: $0.125"]
    tag_bars = page.evaluate(BARS, "#chart-by-tag-feature")
    assert [b["title"] for b in tag_bars] == [f"{XSS_TAG}: $0.625", "plain: $0.25"]
    assert page.get_attribute("#chart-by-model", "aria-label").startswith(f"Spend by model: {XSS_MODEL} $0.50")


def test_cli_writes_the_html_file_0600(tmp_path, monkeypatch, open_report):
    """``ferryman report --format html -o report.html`` writes the page, mode 0600, that opens offline."""
    monkeypatch.setenv("FERRYMAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("FERRYMAN_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    engine = make_engine(url)
    migrate(engine)
    now = dt.datetime.now(dt.UTC).timestamp()
    write(engine, [synthetic(ts=now - 3_600, model="gpt-4o-mini", cost_usd=Decimal("0.00027"), input_tokens=1_000)])
    engine.dispose()
    done = CliRunner().invoke(app, ["report", "--store", url, "--format", "html", "-o", "report.html"])
    assert done.exit_code == 0, done.output
    written = tmp_path / "report.html"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    html = written.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    as_json = CliRunner().invoke(app, ["report", "--store", url, "--format", "json"])
    figures = json.loads(as_json.stdout)["totals"]
    page = open_report(html, tmp_path / "opened.html").page
    assert page.get_attribute('#totals [data-stat="cost_usd"]', "data-value") == figures["cost_usd"] == "0.0002700000"
    assert page.locator("#chart-daily rect.bar").count() == 1
    assert page.locator("#chart-by-model rect.bar").count() == 1
