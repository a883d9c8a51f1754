// The gateway's dashboard: admin login, then spend charts, budgets, recent requests and the
// error and 429 rates, read from the admin API and refreshed every 10 s.
// The admin key lives in sessionStorage and travels only in the Authorization header.
// Data is written with textContent, never parsed as HTML.

import { barChart, dayChart, plural } from "./charts.js";

const STORAGE = "ferryman.adminKey";
const REFRESH_MS = 10000;
const DAYS = 30;
const RETIRING_WITHIN_DAYS = 180;
const TOP_ADVICE = 3; // OpenAI gives GA models at least six months' notice
// a request from an earlier day: its date, short ("Dec 3, 1:27:05 PM"); the tooltip has the ISO time
const EARLIER = { month: "short", day: "numeric", hour: "numeric", minute: "2-digit", second: "2-digit" };
const $ = (id) => document.getElementById(id);

let timer = null;
let loading = null;

class AuthError extends Error {}

// -- the admin API ---------------------------------------------------------------------------

async function api(path) {
  const key = sessionStorage.getItem(STORAGE);
  if (!key) throw new AuthError("Log in with the gateway's admin key.");
  const reply = await fetch(path, {
    headers: { authorization: `Bearer ${key}`, accept: "application/json" },
    cache: "no-store",
    credentials: "omit",
  });
  if (reply.status === 401) throw new AuthError("That admin key was refused.");
  const body = await reply.json().catch(() => null);
  if (!reply.ok) {
    const message = body?.error?.message ?? `${reply.status} ${reply.statusText}`;
    if (reply.status === 403) throw new AuthError(message);
    throw new Error(`${path}: ${message}`);
  }
  return body;
}

async function load() {
  const [usage, budgets, requests, stats, retiring, report] = await Promise.all([
    api(`/admin/usage?days=${DAYS}`),
    api("/admin/budgets"),
    api("/admin/requests?limit=50"),
    api("/admin/stats?hours=24"),
    api(`/admin/models/retiring?days=${DAYS}&within=${RETIRING_WITHIN_DAYS}`),
    api(`/admin/report?days=${DAYS}`),
  ]);
  return { usage, budgets: budgets.data, requests: requests.data, stats, retiring: retiring.data, advice: report.advice };
}

// -- session ---------------------------------------------------------------------------------

function showLogin(message) {
  stopRefresh();
  sessionStorage.removeItem(STORAGE);
  clearData();
  $("dashboard").hidden = true;
  $("session").hidden = true;
  $("login").hidden = false;
  const error = $("login-error");
  error.textContent = message ?? "";
  error.hidden = !message;
  $("admin-key").value = "";
  $("admin-key").focus();
}

function showDashboard() {
  $("login").hidden = true;
  $("login-error").hidden = true;
  $("dashboard").hidden = false;
  $("session").hidden = false;
}

/** Fetch everything and draw it; back to the login on a refused key. */
async function refresh() {
  if (loading) return loading;
  loading = (async () => {
    try {
      const data = await load();
      showDashboard();
      render(data);
      $("load-error").hidden = true;
      $("updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
      document.body.dataset.loaded = String(Number(document.body.dataset.loaded ?? 0) + 1);
    } catch (error) {
      if (error instanceof AuthError) return showLogin(error.message);
      $("load-error").textContent = `Could not load the dashboard: ${error.message}`;
      $("load-error").hidden = false;
    } finally {
      loading = null;
    }
  })();
  return loading;
}

function startRefresh() {
  stopRefresh();
  timer = setInterval(() => {
    if (!document.hidden) refresh();
  }, REFRESH_MS);
}

function stopRefresh() {
  if (timer !== null) clearInterval(timer);
  timer = null;
}

async function logIn(event) {
  event.preventDefault();
  const key = $("admin-key").value.trim();
  if (!key) return;
  sessionStorage.setItem(STORAGE, key);
  $("admin-key").value = "";
  startRefresh(); // a refused key stops it again
  await refresh();
}

// -- rendering -------------------------------------------------------------------------------

function money(value) {
  const v = Number(value);
  if (v === 0) return "$0.00";
  if (Math.abs(v) < 0.000001) return "<$0.000001";
  if (Math.abs(v) < 0.01) return `$${v.toFixed(6)}`;
  if (Math.abs(v) < 1) return `$${v.toFixed(4)}`;
  return `$${v.toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 })}`;
}

function percent(fraction) {
  const p = fraction * 100;
  if (p === 0) return "0%";
  if (p < 0.1) return "<0.1%";
  return `${p.toFixed(p < 100 ? 1 : 0)}%`;
}

function node(tag, text, className) {
  const element = document.createElement(tag);
  if (text !== undefined && text !== null) element.textContent = String(text);
  if (className) element.className = className;
  return element;
}

/** A cell for text of any length: it wraps anywhere, shows at most a few lines (see .clip in
 * style.css) and carries the whole text as its tooltip, so no column pushes the table wider
 * than the window. */
function clippedCell(text, className, title = text) {
  const cell = node("td", undefined, className);
  cell.append(node("div", text, "clip"));
  if (title) cell.title = title;
  return cell;
}

function render({ usage, budgets, requests, stats, retiring, advice }) {
  renderStats(stats);
  dayChart($("chart-by-day"), usage.by_day, { days: DAYS, money, label: "Spend by day" });
  barChart($("chart-by-model"), usage.by_model, { money, label: "Spend by model" });
  barChart($("chart-by-key"), usage.by_key, { money, label: "Spend by key", id: (r) => r.key_id });
  renderBudgets(budgets);
  renderRequests(requests);
  renderRetiring(retiring);
  renderAdvice(advice);
}

function clearData() {
  for (const id of ["stats", "chart-by-day", "chart-by-model", "chart-by-key", "budgets"]) $(id).replaceChildren();
  $("requests").tBodies[0].replaceChildren();
  $("retiring").tBodies[0].replaceChildren();
  $("advice").replaceChildren();
  $("updated").textContent = "";
  $("load-error").hidden = true;
  delete document.body.dataset.loaded;
}

function renderStats(s) {
  const tiles = [
    ["calls", "Calls", s.calls.toLocaleString(), ""],
    ["error-rate", "Error rate", percent(s.error_rate), `${plural(s.errors, "error")} (status ≥ 400)`],
    ["rate-limited-rate", "429 rate", percent(s.rate_limited_rate), `${plural(s.rate_limited, "refusal")}`],
    ["cost", "Spend", money(s.cost_usd), ""],
    ["open-streams", "Open streams", s.open_streams.toLocaleString(), "now"],
  ];
  $("stats").replaceChildren(
    ...tiles.map(([id, label, value, note]) => {
      const tile = node("div", undefined, "tile");
      tile.id = `stat-${id}`;
      const dd = node("dd", value, "value");
      if (note) dd.append(node("span", note, "muted note"));
      tile.append(node("dt", label), dd);
      return tile;
    }),
  );
  $("stat-error-rate").classList.toggle("bad", s.error_rate > 0.05);
  $("stat-rate-limited-rate").classList.toggle("bad", s.rate_limited_rate > 0.05);
}

function renderBudgets(budgets) {
  if (!budgets.length) {
    $("budgets").replaceChildren(node("li", "No key or team has a budget.", "muted"));
    return;
  }
  $("budgets").replaceChildren(
    ...budgets.map((b) => {
      const used = Math.max(0, b.used_fraction);
      const item = node("li", undefined, "budget");
      Object.assign(item.dataset, { kind: b.kind, id: b.id, usedFraction: String(used) });
      const head = node("div", undefined, "budget-head");
      head.append(node("span", b.kind, "badge"), node("strong", b.name), node("span", percent(used), "pct"));
      const bar = node("div", undefined, "meter");
      bar.setAttribute("role", "progressbar");
      bar.setAttribute("aria-label", `${b.name} budget used`);
      bar.setAttribute("aria-valuemin", "0");
      bar.setAttribute("aria-valuemax", "100");
      bar.setAttribute("aria-valuenow", (Math.min(used, 1) * 100).toFixed(1));
      const fill = node("div", undefined, "fill");
      fill.style.width = `${Math.min(used, 1) * 100}%`;
      fill.classList.toggle("warn", used >= 0.8 && used < 1);
      fill.classList.toggle("over", used >= 1);
      bar.append(fill);
      const spent = `${money(b.spent_usd)} spent + ${money(b.reserved_usd)} reserved`;
      const detail = node("div", `${spent} of ${money(b.usd)} this ${b.period} (${b.window})`, "muted");
      item.append(head, bar, detail);
      return item;
    }),
  );
}

function renderRequests(rows) {
  const body = $("requests").tBodies[0];
  if (!rows.length) {
    const cell = node("td", "No requests yet.", "muted");
    cell.colSpan = 10;
    const tr = node("tr");
    tr.append(cell);
    body.replaceChildren(tr);
    return;
  }
  body.replaceChildren(
    ...rows.map((r) => {
      const tr = node("tr");
      Object.assign(tr.dataset, { seq: r.seq, status: r.status });
      if (r.status >= 400) tr.className = r.status === 429 ? "limited" : "failed";
      const when = new Date(r.ts * 1000);
      const today = when.toDateString() === new Date().toDateString();
      const time = node("td", undefined, "time");
      const stamp = node("time", today ? when.toLocaleTimeString() : when.toLocaleString(undefined, EARLIER));
      stamp.dateTime = when.toISOString();
      time.append(stamp);
      time.title = when.toISOString();
      tr.append(
        time,
        clippedCell(r.key_name, "key", `${r.key_name} (${r.principal})`),
        clippedCell(r.model ?? "–", "model", r.model),
        node("td", r.endpoint, "endpoint"),
        node("td", r.status, "status"),
        node("td", `${Math.round(r.latency_ms).toLocaleString()} ms`, "num"),
        node("td", `${r.input_tokens.toLocaleString()} / ${r.output_tokens.toLocaleString()}`, "num"),
        node("td", money(r.cost_usd), "num"),
        node("td", r.cache),
        clippedCell(r.error ?? "", "err"),
      );
      return tr;
    }),
  );
}

// the report's advice, largest monthly saving first (the order the report gives), at most three
function renderAdvice(items) {
  if (!items.length) {
    $("advice").replaceChildren(node("li", `Nothing to change in the last ${DAYS} days.`, "muted"));
    return;
  }
  $("advice").replaceChildren(
    ...items.slice(0, TOP_ADVICE).map((a) => {
      const item = node("li", undefined, "advice-item");
      Object.assign(item.dataset, { kind: a.kind, savingsPerMonth: a.savings_usd_per_month ?? "" });
      const head = node("div", undefined, "advice-head");
      head.append(node("span", a.kind.replace(/_/g, " "), "badge"), node("strong", a.title));
      const month = a.savings_usd_per_month === null ? "–" : `${money(a.savings_usd_per_month)} a month`;
      item.append(head, node("div", `${month}: ${a.action}`, "muted"));
      return item;
    }),
  );
}

function renderRetiring(rows) {
  const body = $("retiring").tBodies[0];
  if (!rows.length) {
    const cell = node("td", `No model called in the last ${DAYS} days retires within ${RETIRING_WITHIN_DAYS} days.`, "muted");
    cell.colSpan = 7;
    const tr = node("tr");
    tr.append(cell);
    body.replaceChildren(tr);
    return;
  }
  body.replaceChildren(
    ...rows.map((m) => {
      const tr = node("tr");
      Object.assign(tr.dataset, { model: m.model, daysLeft: String(m.days_left) });
      tr.className = m.retired ? "failed" : m.days_left <= 30 ? "limited" : "";
      tr.append(
        clippedCell(m.model, "model"),
        node("td", m.shutdown_date),
        node("td", m.retired ? "retired" : m.days_left.toLocaleString(), "num"),
        clippedCell(m.successor ?? "–", "model", m.successor ?? "no successor named"),
        node("td", m.calls.toLocaleString(), "num"),
        node("td", money(m.cost_usd), "num"),
        node("td", m.source, "muted"),
      );
      return tr;
    }),
  );
}

// -- start -----------------------------------------------------------------------------------

$("login-form").addEventListener("submit", logIn);
$("logout").addEventListener("click", () => showLogin());
$("refresh").addEventListener("click", () => refresh());
document.addEventListener("visibilitychange", () => {
  if (!document.hidden && timer !== null) refresh();
});

if (sessionStorage.getItem(STORAGE)) {
  $("login").hidden = true;
  startRefresh();
  refresh();
} else {
  showLogin();
}
