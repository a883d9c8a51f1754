"""The dashboard at /ui in headless Chromium (Debian's ``chromium``, driven by Playwright).

A real gateway in front of the mock gets a few calls through the official SDK (three models, four
keys, one key and one team with a budget, one call refused with a 429 and one that fails), then
Chromium logs in with the admin key and reads the page the way a person would: the charts, the
budget bars, the recent requests and the error and 429 rates. A screenshot of each chart is
decoded (PNG by hand in :mod:`tests.chromium`) to prove the bars are painted, not only in the DOM.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from ferryman import catalogue
from ferryman.gateway.key_rules import parse_budget
from ferryman.mock.control_client import MockControl
from tests.chromium import count_colour, keep_screenshots, png_pixels
from tests.gateway.conftest import ADMIN_KEY
from tests.leak_guard import assert_no_secrets

CHROMIUM = Path("/usr/bin/chromium")
MESSAGES = [{"role": "user", "content": "Say hello."}]
BAR_RGB = (0x25, 0x63, 0xEB)  # --bar in ui/style.css
XSS_NAME = '<img src=x onerror="window.pwned=1">'


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        reason = f"{CHROMIUM} is missing (apt-get install chromium)"
        if os.environ.get("FERRYMAN_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason}, and FERRYMAN_REQUIRE_SERVICES=1 makes the dashboard tests mandatory")
        pytest.skip(reason)
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab (its own session storage); any uncaught script error fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 1100}, device_scale_factor=1)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    context.close()
    assert not errors, f"script errors in the dashboard: {errors}"


def populate(gw: Any, mock: MockControl) -> dict[str, str]:
    """Calls through the SDK so every panel has something to show; returns the key names."""
    gw.server.call(gw.gateway.keys.set_team("research", budget=parse_budget("1/day")))
    alpha = gw.client(gw.new_key(name="team-alpha", budget="0.001/month"))
    batch = gw.client(gw.new_key(name="batch-jobs", team="research"))
    slow = gw.client(gw.new_key(name="slow-lane", rpm=1))
    odd = gw.client(gw.new_key(name=XSS_NAME))
    # max_tokens keeps the budget stage's worst-case reservation under the small cap
    alpha.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=40)
    alpha.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=40)
    batch.embeddings.create(model="text-embedding-3-small", input=["ferry", "man"])
    odd.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    slow.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError):  # rpm=1: the second call in the minute is refused
        slow.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    mock.set_faults(["path=/v1/chat/completions;times=1;status=400"])  # the upstream fails the next call
    try:
        with pytest.raises(openai.BadRequestError):
            batch.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    finally:
        mock.set_faults([])
    return {"alpha": "team-alpha", "batch": "batch-jobs", "slow": "slow-lane", "odd": XSS_NAME}


def log_in(page: Page, gw: Any, key: str = ADMIN_KEY) -> None:
    page.goto(gw.url + "/ui")
    page.fill("#admin-key", key)
    page.click("#login-form button[type=submit]")


def logged_in(page: Page, gw: Any) -> None:
    log_in(page, gw)
    page.wait_for_selector("body[data-loaded]")


# -- tests -----------------------------------------------------------------------------------


def test_login_is_required_and_a_wrong_key_is_refused(gateway, ferryman_mock, page):
    """Without a login the page shows only the form and no data; a wrong admin key shows an error
    and the form again, and nothing is kept."""
    gw = gateway()
    names = populate(gw, ferryman_mock)
    page.goto(gw.url + "/ui")
    assert page.is_visible("#login-form") and page.is_visible("#admin-key")
    assert page.is_hidden("#dashboard") and page.is_hidden("#logout")
    assert page.locator("rect.bar").count() == 0 and page.locator("#requests tbody tr").count() == 0
    for name in names.values():
        assert name not in page.content()

    log_in(page, gw, key="not-the-admin-key")
    page.wait_for_selector("#login-error:not([hidden])")
    assert "refused" in page.inner_text("#login-error")
    assert page.is_visible("#login-form") and page.is_hidden("#dashboard")
    assert page.evaluate("sessionStorage.length") == 0
    assert page.locator("rect.bar").count() == 0


def test_dashboard_shows_spend_budgets_requests_and_rates(gateway, ferryman_mock, page):
    """After login: one bar per model, key and day with calls, each with height; the budget bars
    show the used fraction; the recent requests list the calls by key name (names shown as text,
    never as HTML) and no secret; the error and 429 rates match the admin API."""
    gw = gateway()
    names = populate(gw, ferryman_mock)
    usage = gw.admin.get("/admin/usage?days=30").json()
    budgets = {b["name"]: b for b in gw.admin.get("/admin/budgets").json()["data"]}
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    logged_in(page, gw)

    bars = {
        "#chart-by-day": len(usage["by_day"]),
        "#chart-by-model": len(usage["by_model"]),
        "#chart-by-key": len(usage["by_key"]),
    }
    assert bars == {"#chart-by-day": 1, "#chart-by-model": 3, "#chart-by-key": 4}
    for chart, count in bars.items():
        rects = page.locator(f"{chart} svg rect.bar")
        assert rects.count() == count, chart
        for i in range(count):
            box = rects.nth(i).bounding_box()
            assert box and box["height"] > 0 and box["width"] > 0, (chart, i, box)
    models = page.locator("#chart-by-model rect.bar").evaluate_all("rs => rs.map(r => r.dataset.name)")
    assert sorted(models) == ["gpt-4o", "gpt-4o-mini", "text-embedding-3-small"]
    assert page.locator("#chart-by-day rect.bar").get_attribute("data-day") == usage["by_day"][0]["day"]
    # the costliest model's bar is the longest
    widths = {m: page.locator(f'#chart-by-model rect.bar[data-name="{m}"]').bounding_box()["width"] for m in models}
    assert max(widths, key=widths.get) == usage["by_model"][0]["name"]

    assert page.locator("#budgets li.budget").count() == 2
    alpha = budgets[names["alpha"]]
    # two calls against a $0.001 budget: what they cost (replies are of random length), nothing held
    assert Decimal(alpha["reserved_usd"]) == 0 and Decimal(alpha["spent_usd"]) > 0
    assert alpha["used_fraction"] == pytest.approx(float(Decimal(alpha["spent_usd"]) / Decimal("0.001")))
    assert 0 < alpha["used_fraction"] < 1
    for name, budget in budgets.items():
        item = page.locator("#budgets li.budget", has_text=name)
        assert float(item.get_attribute("data-used-fraction")) == pytest.approx(budget["used_fraction"])
        meter = item.locator("[role=progressbar]").bounding_box()
        fill = item.locator(".fill").bounding_box()
        assert fill["width"] / meter["width"] == pytest.approx(min(budget["used_fraction"], 1), abs=0.01)
    # the percentage shown, to one decimal (the page rounds as JavaScript does: 25.25 may show as 25.3)
    shown = re.search(r"(\d+\.\d)%", page.locator("#budgets li.budget", has_text=names["alpha"]).inner_text())
    assert shown and abs(float(shown.group(1)) - alpha["used_fraction"] * 100) <= 0.05 + 1e-9, shown

    rows = page.locator("#requests tbody tr")
    assert rows.count() == 7
    keys_shown = rows.locator("td.key").all_inner_texts()
    assert sorted(set(keys_shown)) == sorted(names.values())
    assert page.locator('#requests tbody tr[data-status="429"]').count() == 1
    assert page.locator('#requests tbody tr[data-status="400"]').count() == 1
    assert page.evaluate("window.pwned") is None  # the odd key name was text, not markup
    assert page.locator("#requests img").count() == 0

    stats = gw.admin.get("/admin/stats?hours=24").json()
    assert (stats["calls"], stats["errors"], stats["rate_limited"]) == (7, 2, 1)
    assert page.inner_text("#stat-calls dd").startswith("7")
    assert "28.6%" in page.inner_text("#stat-error-rate")  # 2 of 7
    assert "14.3%" in page.inner_text("#stat-rate-limited-rate")  # 1 of 7
    assert "1 refusal" in page.inner_text("#stat-rate-limited-rate")

    html, text = page.content(), page.inner_text("body")
    for shown in (html, text):
        assert "fm-" not in shown and "sk-" not in shown and ADMIN_KEY not in shown
        assert_no_secrets(shown, "the dashboard")
    assert not any(ADMIN_KEY in url for url in urls)
    assert ADMIN_KEY not in page.url


def test_retiring_models_in_use_are_listed_from_the_catalogue(gateway, ferryman_mock, page):
    """The models called lately that retire within 180 days: each row's shutdown date, days left
    and successor are the catalogue's, its calls and spend the audit log's (computed again here
    from the recent requests); a model with no shutdown date (the embedding model) is not listed."""
    gw = gateway()
    populate(gw, ferryman_mock)
    api = gw.admin.get("/admin/models/retiring?days=30&within=180").json()
    today = dt.date.fromisoformat(api["today"])
    recent = gw.admin.get("/admin/requests?limit=1000").json()["data"]
    models = sorted({r["model"] for r in recent if r["model"]})
    expected = {}
    for model in models:
        life = catalogue.lifecycle(model)
        if life and life.shutdown_date and (life.shutdown_date - today).days <= 180:
            calls = [r for r in recent if r["model"] == model]
            expected[model] = (life.shutdown_date.isoformat(), life.successor, len(calls))
    assert {m["model"]: (m["shutdown_date"], m["successor"], m["calls"]) for m in api["data"]} == expected
    assert "gpt-4o-mini" in expected and "text-embedding-3-small" not in expected
    for m in api["data"]:
        spent = sum(Decimal(r["cost_usd"]) for r in recent if r["model"] == m["model"])
        assert Decimal(m["cost_usd"]) == spent.quantize(Decimal("1e-6"))

    logged_in(page, gw)
    rows = page.locator("#retiring tbody tr")
    assert rows.count() == len(expected)
    for model, (shutdown, successor, calls) in expected.items():
        row = page.locator(f'#retiring tbody tr[data-model="{model}"]')
        cells = row.locator("td").all_inner_texts()
        assert cells[0] == model and cells[1] == shutdown and cells[3] == successor
        assert cells[2] == str((dt.date.fromisoformat(shutdown) - today).days) and cells[4] == str(calls)
    assert gw.admin.get("/admin/models/retiring?within=-1").status_code == 400
    assert gw.admin.get("/admin/models/retiring?soon=1").status_code == 400


def test_top_advice_is_the_reports(gateway, ferryman_mock, page):
    """The dashboard's top advice is /admin/report's (the same JSON as ``ferryman report``), in
    its order: gpt-4o-mini and gpt-4o retire, so the deprecated_model advice is there."""
    gw = gateway()
    populate(gw, ferryman_mock)
    report = gw.admin.get("/admin/report?days=30").json()
    assert report["version"] == 1 and report["advice"]
    assert {a["kind"] for a in report["advice"]} == {"deprecated_model"}
    logged_in(page, gw)
    items = page.locator("#advice li.advice-item")
    expected = report["advice"][:3]
    assert items.count() == len(expected)
    for i, advice in enumerate(expected):
        assert items.nth(i).get_attribute("data-kind") == advice["kind"]
        assert advice["title"] in items.nth(i).inner_text()
    assert gw.admin.get("/admin/report?by=colour").status_code == 400
    assert gw.admin.get("/admin/report?tag=nope").json()["error"]["param"] == "tag"


def test_charts_are_painted(gateway, ferryman_mock, page, tmp_path):
    """A screenshot of each chart holds about as many pixels of the bar colour as its bars cover
    in the layout: the charts render, they are not blank boxes."""
    gw = gateway()
    populate(gw, ferryman_mock)
    logged_in(page, gw)
    page.mouse.move(0, 0)  # no bar in its hover colour
    for chart in ("chart-by-day", "chart-by-model", "chart-by-key"):
        element = page.locator(f"#{chart}")
        shot = element.screenshot(path=str(tmp_path / f"{chart}.png"), animations="disabled")
        width, height, pixels = png_pixels(shot)
        box = element.bounding_box()
        assert abs(width - box["width"]) < 2 and abs(height - box["height"]) < 2, (width, height, box)
        painted = count_colour(pixels, BAR_RGB)
        boxes = page.locator(f"#{chart} rect.bar").evaluate_all(
            "rs => rs.map(r => { const b = r.getBoundingClientRect(); return b.width * b.height; })"
        )
        laid_out = sum(boxes)
        assert painted > 0.8 * laid_out and painted < 1.25 * laid_out + 50, (chart, painted, laid_out)
        assert painted / (width * height) > 0.005, (chart, painted, width * height)
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    keep_screenshots(*tmp_path.glob("*.png"))


def test_refreshes_itself_and_logout_forgets_the_key(gateway, page):
    """The page reloads its data on its own every 10 s (a fake clock moves time on); the key sits
    in session storage only, so a reload keeps the session; logging out clears the key and the
    data, and a reload then asks for the key again."""
    gw = gateway()
    client = gw.client(gw.new_key(name="refresher"))
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    page.clock.install(time=time.time())
    logged_in(page, gw)
    assert page.locator("#requests tbody tr").count() == 1
    assert page.evaluate("sessionStorage.getItem('ferryman.adminKey')") == ADMIN_KEY
    assert page.evaluate("localStorage.length") == 0 and ADMIN_KEY not in page.url

    client.embeddings.create(model="text-embedding-3-small", input="later")
    page.clock.run_for(10_000)
    expect(page.locator("#requests tbody tr")).to_have_count(2)
    assert page.locator("#chart-by-model rect.bar").count() == 2

    page.reload()  # the session outlives a reload of the tab
    page.wait_for_selector("body[data-loaded]")
    assert page.is_hidden("#login") and page.locator("#requests tbody tr").count() == 2

    page.click("#logout")
    assert page.is_visible("#login-form") and page.is_hidden("#dashboard")
    assert page.evaluate("sessionStorage.length") == 0
    assert page.locator("rect.bar").count() == 0 and page.locator("#requests tbody tr").count() == 0
    page.reload()
    assert page.is_visible("#login-form") and page.is_hidden("#dashboard")


# -- layout: every table fits the window -----------------------------------------------------

WIDTHS = (1024, 1280, 1440)
# a key name with no place to break a line, a fine-tuned model id, an error with a long request id
LONG_KEY = "nightlyevaluationpipelineforthecustomersupporttriageteamintheemearegionreplica0042" + "x" * 40  # 124 chars
LONG_TEAM_KEY = "batch-jobs-for-the-quarterly-finance-reconciliation-and-the-audit-trail-exports-team"
LONG_MODEL = "ft:gpt-4o-mini-2024-07-18:ferryman-research-and-development:customer-support-triage-v2:AbC123xYz"
LONG_MESSAGE = (
    "The upstream refused this request after checking the prompt against the organisation's policy "
    "for request req_7f3a9c2e4b1d8f6a0c5e3b9d7a1f4c8e2b6d0a9f3c7e1b5d9a8c7b6e5f4d3c2b1a0 and asked for a "
    "shorter prompt or a model with a larger context window before trying again"
)

GEOMETRY = """() => {
  const doc = document.documentElement;
  const box = (el) => {
    const b = el.getBoundingClientRect();
    return { left: b.left, right: b.right, width: b.width, height: b.height,
             scrollWidth: el.scrollWidth, clientWidth: el.clientWidth, text: el.innerText.trim() };
  };
  const tables = [...document.querySelectorAll("table")].map((table) => {
    const wrap = table.parentElement;
    const w = wrap.getBoundingClientRect();
    return {
      id: table.id, table: box(table), wrap: box(wrap),
      visibleLeft: Math.max(w.left, 0), visibleRight: Math.min(w.left + wrap.clientWidth, doc.clientWidth),
      heads: [...table.querySelectorAll("th")].map(box),
      cells: [...table.querySelectorAll("td, td *")].map(box),
    };
  });
  return {
    clientWidth: doc.clientWidth, scrollWidth: doc.scrollWidth, bodyScrollWidth: document.body.scrollWidth, tables,
  };
}"""


def populate_long(gw: Any, mock: MockControl) -> None:
    """Calls whose rows hold long names and messages: a key name with nowhere to break a line, a
    long one with hyphens (with a budget), a fine-tuned model's id the mock does not know, and an
    upstream error with a long request id in it."""
    odd = gw.client(gw.new_key(name=LONG_KEY, budget="1/day"))
    team = gw.client(gw.new_key(name=LONG_TEAM_KEY))
    odd.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=20)
    team.embeddings.create(model="text-embedding-3-small", input=["ferry"])
    with pytest.raises(openai.APIStatusError):
        odd.chat.completions.create(model=LONG_MODEL, messages=MESSAGES, max_tokens=20)
    mock.set_faults([f"path=/v1/chat/completions;times=1;status=400;message={LONG_MESSAGE}"])
    try:
        with pytest.raises(openai.BadRequestError):
            team.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=20)
    finally:
        mock.set_faults([])


@pytest.mark.parametrize("width", WIDTHS)
def test_every_table_fits_the_window_with_long_names_and_errors(gateway, ferryman_mock, page, tmp_path, width):
    """At 1024, 1280 and 1440 px the tables (recent requests, retiring models) and the page fit the window: no
    column is cut off or scrolled out of sight, every header cell shows whole, no cell's text
    spills out of its cell, and the long error shows in its cell with the whole text as its
    tooltip. A screenshot of each width is kept (FERRYMAN_KEEP_SCREENSHOTS=DIR copies it)."""
    gw = gateway()
    populate_long(gw, ferryman_mock)
    page.set_viewport_size({"width": width, "height": 900})
    logged_in(page, gw)
    expect(page.locator("#requests tbody tr")).to_have_count(4)
    failed = page.locator('#requests tbody tr[data-status="400"] td.err')
    expect(failed).to_have_attribute("title", re.compile("req_7f3a9c2e"))
    shot = tmp_path / f"dashboard-{width}.png"
    page.screenshot(path=str(shot), full_page=True, animations="disabled")
    keep_screenshots(shot)

    geometry = page.evaluate(GEOMETRY)
    view = geometry["clientWidth"]
    assert view == width, geometry["clientWidth"]  # no vertical scrollbar eats into it in headless mode
    assert geometry["scrollWidth"] <= view and geometry["bodyScrollWidth"] <= view, geometry  # no sideways page scroll
    assert [t["id"] for t in geometry["tables"]] == ["retiring", "requests"]
    for table in geometry["tables"]:
        box, wrap = table["table"], table["wrap"]
        assert box["right"] <= view + 0.5, (width, table["id"], box)
        assert wrap["scrollWidth"] <= wrap["clientWidth"], (width, "the table scrolls inside its card", wrap)
        heads = table["heads"]
        assert [h["text"] for h in heads][-1] == {"requests": "Error", "retiring": "Date from"}[table["id"]]
        for head in heads:
            assert table["visibleLeft"] - 0.5 <= head["left"] and head["right"] <= table["visibleRight"] + 0.5, (
                width,
                head,
                table["visibleRight"],
            )
            assert head["scrollWidth"] <= head["clientWidth"], (width, "header text spills out", head)
        for cell in table["cells"]:
            assert cell["right"] <= table["visibleRight"] + 0.5, (width, cell)
            assert cell["scrollWidth"] <= cell["clientWidth"] + 1, (width, "cell text spills out", cell)

    # the long error is on screen, in its own cell, and what is at its place is that cell
    failed.scroll_into_view_if_needed()
    cell = failed.bounding_box()
    assert cell and cell["width"] >= 120 and cell["height"] > 0, (width, cell)
    assert cell["x"] + cell["width"] <= view + 0.5
    said = f"400 invalid_request_error: {LONG_MESSAGE}"
    assert failed.inner_text() == said and failed.get_attribute("title") == said
    hit = page.evaluate(
        "([x, y]) => document.elementFromPoint(x, y)?.closest('td')?.classList.contains('err') ?? false",
        [cell["x"] + cell["width"] / 2, cell["y"] + min(cell["height"] / 2, 8)],
    )
    assert hit, (width, "the error cell is covered or off screen")
    for name in (LONG_KEY, LONG_TEAM_KEY):  # long names are in their cells' tooltips, whole
        assert page.locator(f'#requests td.key[title^="{name} ("]').count() >= 1
    assert page.locator(f'#requests td.model[title="{LONG_MODEL}"]').count() == 1
