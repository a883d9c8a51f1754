// Inline-SVG charts: one bar per day on a time axis, and horizontal bars for named items.
// Text goes in with textContent only; every bar carries a <title> (its tooltip and accessible name)
// and data-* attributes saying what it shows.

const SVG = "http://www.w3.org/2000/svg";
const MIN_BAR = 2; // px: an item with calls but ~no spend still shows

function el(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function frame(container, width, height, label) {
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label });
  svg.append(el("title", {}, label));
  container.replaceChildren(svg);
  return svg;
}

/** Replace the chart with a short note (no data yet). */
export function emptyChart(container, text) {
  const note = document.createElement("p");
  note.className = "muted empty";
  note.textContent = text;
  container.replaceChildren(note);
}

/** The UTC days from `days` ago to today, plus any day in `rows` outside that range. */
function daySlots(rows, days) {
  const slots = new Set(rows.map((r) => r.day));
  const today = Date.now();
  for (let i = days - 1; i >= 0; i--) slots.add(new Date(today - i * 86400000).toISOString().slice(0, 10));
  return [...slots].sort();
}

/**
 * Spend by day: a time axis of `days` UTC days, a bar on each day that had calls.
 * rows: [{day: "2026-11-25", calls, cost_usd}]
 */
export function dayChart(container, rows, { days, money, label }) {
  if (!rows.length) return emptyChart(container, "No calls in this period.");
  const W = 1100, H = 220, left = 72, right = 8, top = 12, bottom = 26;
  const slots = daySlots(rows, days);
  const byDay = new Map(rows.map((r) => [r.day, r]));
  const max = Math.max(...rows.map((r) => Number(r.cost_usd)), 0);
  const plotH = H - top - bottom;
  const step = (W - left - right) / slots.length;
  const svg = frame(container, W, H, label);

  for (const f of [0, 0.5, 1]) {
    const y = top + plotH * (1 - f);
    svg.append(el("line", { class: "grid", x1: left, x2: W - right, y1: y, y2: y }));
    svg.append(el("text", { class: "axis", x: left - 6, y: y + 4, "text-anchor": "end" }, money(max * f)));
  }
  slots.forEach((day, i) => {
    const x = left + i * step;
    if (i % 5 === slots.length % 5 || i === slots.length - 1) {
      const tick = el("text", { class: "axis", x: x + step / 2, y: H - 8, "text-anchor": "middle" }, day.slice(5));
      svg.append(tick);
    }
    const row = byDay.get(day);
    if (!row) return;
    const value = Number(row.cost_usd);
    const h = Math.max(MIN_BAR, max > 0 ? (value / max) * plotH : 0);
    const bar = el("rect", {
      class: "bar",
      x: x + step * 0.15,
      y: top + plotH - h,
      width: Math.max(1, step * 0.7),
      height: h,
      "data-day": day,
      "data-value": row.cost_usd,
      "data-calls": row.calls,
    });
    bar.append(el("title", {}, `${day}: ${money(value)} · ${plural(row.calls, "call")}`));
    svg.append(bar);
  });
}

/**
 * Horizontal bars, one per item, longest first as given.
 * rows: [{name, calls, cost_usd, tokens}]; `id` names the item in data-id (a model or a key id).
 */
export function barChart(container, rows, { money, label, id = (r) => r.name }) {
  if (!rows.length) return emptyChart(container, "No calls in this period.");
  const W = 520, rowH = 30, labelW = 180, valueW = 96, top = 4;
  const H = top * 2 + rows.length * rowH;
  const max = Math.max(...rows.map((r) => Number(r.cost_usd)), 0);
  const plotW = W - labelW - valueW;
  const svg = frame(container, W, H, label);

  rows.forEach((row, i) => {
    const y = top + i * rowH;
    const value = Number(row.cost_usd);
    const w = Math.max(MIN_BAR, max > 0 ? (value / max) * plotW : 0);
    const name = el("text", { class: "label", x: labelW - 8, y: y + rowH / 2 + 4, "text-anchor": "end" });
    name.textContent = clip(row.name, 24);
    name.append(el("title", {}, row.name));
    svg.append(name);
    const bar = el("rect", {
      class: "bar",
      x: labelW,
      y: y + 5,
      width: w,
      height: rowH - 10,
      "data-id": id(row),
      "data-name": row.name,
      "data-value": row.cost_usd,
      "data-calls": row.calls,
    });
    const tokens = row.tokens === undefined ? "" : ` · ${row.tokens.toLocaleString()} tokens`;
    bar.append(el("title", {}, `${row.name}: ${money(value)} · ${plural(row.calls, "call")}${tokens}`));
    svg.append(bar);
    svg.append(el("text", { class: "value", x: labelW + w + 6, y: y + rowH / 2 + 4 }, money(value)));
  });
}

export function plural(n, word) {
  return `${n.toLocaleString()} ${word}${n === 1 ? "" : "s"}`;
}

function clip(text, n) {
  return text.length > n ? `${text.slice(0, n - 1)}…` : text;
}
