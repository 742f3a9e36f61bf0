// The usage page of the signed-in key: balance, tokens and cost per day split by mode (SVG bar
// charts drawn with DOM calls, no chart library), and the same numbers as a table.

import { h, svg, formatCost } from "../dom.js";

const MODES = ["long", "short"];

export class UsageView {
  /** @param {import("../api.js").ApiClient} api */
  constructor(api) {
    this.api = api;
    this.root = document.getElementById("usage-view");
    this.range = document.getElementById("usage-range");
    this.error = document.getElementById("usage-error");
    this.balance = document.getElementById("balance");
    this.tableBody = document.querySelector("#usage-table tbody");
    this.range.addEventListener("change", () => this.load());
    document.getElementById("usage-refresh").addEventListener("click", () => this.load());
  }

  async load() {
    const days = Number(this.range.value);
    const end = new Date();
    const start = new Date(end.getTime() - (days - 1) * 86_400_000);
    const iso = (d) => d.toISOString().slice(0, 10); // the gateway counts days in UTC
    this.error.textContent = "";
    this.root.setAttribute("aria-busy", "true");
    try {
      const [balance, rows] = await Promise.all([this.api.balance(), this.api.usage(iso(start), iso(end))]);
      this.renderBalance(balance);
      const dayList = [];
      for (let t = start.getTime(); iso(new Date(t)) <= iso(end); t += 86_400_000) dayList.push(iso(new Date(t)));
      this.renderChart("chart-tokens", dayList, rows, (r) => (r.prompt_tokens || 0) + (r.completion_tokens || 0), (v) =>
        compact(v),
      );
      this.renderChart("chart-cost", dayList, rows, (r) => Number(r.cost || 0), (v) => formatCost(v));
      this.renderTable(rows);
    } catch (err) {
      this.error.textContent = err.plainWords || err.message;
    } finally {
      this.root.removeAttribute("aria-busy");
    }
  }

  renderBalance(b) {
    const item = (label, value) => h("div", {}, h("dt", { text: label }), h("dd", { text: value }));
    this.balance.replaceChildren(
      item("Budget", b.budget === null || b.budget === undefined ? "No limit" : formatCost(b.budget)),
      item("Spent", formatCost(b.spent)),
      item("Reserved", formatCost(b.reserved)),
      item("Available", b.available === null || b.available === undefined ? "No limit" : formatCost(b.available)),
    );
  }

  renderTable(rows) {
    const sorted = [...rows].sort((a, b) => (a.day === b.day ? a.mode.localeCompare(b.mode) : a.day < b.day ? 1 : -1));
    if (!sorted.length) {
      this.tableBody.replaceChildren(h("tr", {}, h("td", { colSpan: 7, text: "No requests in this period." })));
      return;
    }
    this.tableBody.replaceChildren(
      ...sorted.map((r) =>
        h(
          "tr",
          { dataset: { day: r.day, mode: r.mode } },
          h("td", { text: r.day }),
          h("td", { text: r.mode }),
          h("td", { text: String(r.requests ?? 0) }),
          h("td", { text: String(r.prompt_tokens ?? 0) }),
          h("td", { text: String(r.reasoning_tokens ?? 0) }),
          h("td", { text: String(r.completion_tokens ?? 0) }),
          h("td", { text: formatCost(r.cost) }),
        ),
      ),
    );
  }

  /** A stacked bar per day, one colour per mode. */
  renderChart(id, days, rows, value, label) {
    const W = 600;
    const H = 200;
    const pad = { left: 46, right: 8, top: 10, bottom: 22 };
    const perDay = new Map(days.map((d) => [d, { long: 0, short: 0, other: 0 }]));
    for (const r of rows) {
      const slot = perDay.get(r.day);
      if (slot) slot[MODES.includes(r.mode) ? r.mode : "other"] += value(r);
    }
    const totals = [...perDay.values()].map((s) => s.long + s.short + s.other);
    const max = Math.max(0, ...totals);
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
    const plotH = H - pad.top - pad.bottom;
    const step = (W - pad.left - pad.right) / days.length;
    chart.append(svg("line", { class: "axis", x1: pad.left, x2: W - pad.right, y1: H - pad.bottom, y2: H - pad.bottom }));
    if (max === 0) {
      chart.append(svg("text", { class: "empty", x: W / 2, y: H / 2, "text-anchor": "middle" }, "No usage yet"));
    } else {
      chart.append(
        svg("text", { x: pad.left - 4, y: pad.top + 8, "text-anchor": "end" }, label(max)),
        svg("text", { x: pad.left - 4, y: H - pad.bottom, "text-anchor": "end" }, "0"),
      );
    }
    const labelEvery = Math.ceil(days.length / 8);
    days.forEach((day, i) => {
      const slot = perDay.get(day);
      let y = H - pad.bottom;
      for (const mode of ["long", "short", "other"]) {
        if (!slot[mode]) continue;
        const height = (slot[mode] / max) * plotH;
        y -= height;
        const bar = svg("rect", {
          class: `bar-${mode}`,
          x: pad.left + i * step + step * 0.15,
          y,
          width: Math.max(1, step * 0.7),
          height: Math.max(height, 1),
          rx: 2,
        });
        bar.append(svg("title", {}, `${day} · ${mode}: ${label(slot[mode])}`));
        chart.append(bar);
      }
      const lastLabel = i === days.length - 1 && (days.length - 1) % labelEvery >= labelEvery / 2;
      if (i % labelEvery === 0 || lastLabel) {
        chart.append(svg("text", { x: pad.left + i * step + step / 2, y: H - 6, "text-anchor": "middle" }, day.slice(5)));
      }
    });
    const total = totals.reduce((a, b) => a + b, 0);
    chart.setAttribute("aria-label", `${days.length} days, total ${label(total)}`);
    document.getElementById(id).replaceChildren(chart);
  }
}

function compact(n) {
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return String(Math.round(n));
}
