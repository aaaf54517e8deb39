// Keybrake console: the little the server-rendered pages need from a browser.
//  - expiry countdowns ([data-expires] = unix seconds), updated every second;
//  - the copy button of a new vault key, and the question before revoking one key;
//  - the activity chart on the audit page, drawn as SVG from
//    /admin/ui/api/activity (same origin; the session cookie goes along).
// No framework, no inline code (the Content-Security-Policy forbids it).
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";

  function duration(secs) {
    const d = Math.floor(secs / 86400), h = Math.floor((secs % 86400) / 3600);
    const m = Math.floor((secs % 3600) / 60), s = secs % 60;
    const two = (n) => String(n).padStart(2, "0");
    if (d > 0) return d + "d " + two(h) + "h";
    if (h > 0) return h + "h " + two(m) + "m";
    if (m > 0) return m + "m " + two(s) + "s";
    return s + "s";
  }

  function tick() {
    const now = Date.now() / 1000;
    document.querySelectorAll("[data-expires]").forEach((el) => {
      const row = el.closest("tr");
      if (row && row.dataset.state === "revoked") return;
      const left = Math.floor(Number(el.dataset.expires) - now);
      el.textContent = left > 0 ? "in " + duration(left) : "expired";
    });
  }

  function copyButtons() {
    document.querySelectorAll("[data-copy]").forEach((button) => {
      button.addEventListener("click", () => {
        const target = document.getElementById(button.dataset.copy);
        if (!target) return;
        const done = () => { button.textContent = "Copied"; };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(target.textContent).then(done, () => select(target));
        } else {
          select(target);
          button.textContent = "Selected: press Ctrl+C";
        }
      });
    });
  }

  function select(el) {
    const range = document.createRange();
    range.selectNodeContents(el);
    const sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
  }

  function el(name, attrs, parent, text) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function usd(micros) {
    return "$" + (micros / 1e6).toFixed(2);
  }

  function hhmm(ms) {
    const d = new Date(ms);
    return String(d.getUTCHours()).padStart(2, "0") + ":" + String(d.getUTCMinutes()).padStart(2, "0");
  }

  // One bar chart: `series` are stacked, bottom first ([name, values] pairs).
  function chart(box, title, data, series, format) {
    box.textContent = "";
    const width = Math.max(box.clientWidth || 900, 300), height = 130;
    const left = 56, right = 8, top = 20, bottom = 20;
    const plotW = width - left - right, plotH = height - top - bottom;
    const n = data.minutes;
    const totals = new Array(n).fill(0);
    for (const [, values] of series) values.forEach((v, i) => { totals[i] += v; });
    const max = Math.max(...totals, 0);
    const svg = el("svg", { viewBox: "0 0 " + width + " " + height, width: width, height: height, role: "img" }, box);
    el("text", { x: left, y: 13, class: "title" }, svg, title);
    el("line", { x1: left, y1: top + plotH, x2: left + plotW, y2: top + plotH, class: "axis" }, svg);
    el("line", { x1: left, y1: top, x2: left + plotW, y2: top, class: "grid" }, svg);
    el("text", { x: left - 6, y: top + 4, "text-anchor": "end" }, svg, format(max));
    el("text", { x: left - 6, y: top + plotH, "text-anchor": "end" }, svg, format(0));
    const step = [5, 10, 15, 30, 60, 120, 180, 240].find((s) => n / s <= 8) || 240;
    const slot = plotW / n;
    for (let i = 0; i < n; i++) {
      const t = data.start_ms + i * 60000;
      if (Math.round(t / 60000) % step === 0) {
        const x = left + i * slot;
        el("line", { x1: x, y1: top + plotH, x2: x, y2: top + plotH + 4, class: "axis" }, svg);
        el("text", { x: x, y: height - 4, "text-anchor": "middle" }, svg, hhmm(t));
      }
      if (totals[i] === 0 || max === 0) continue;
      let y = top + plotH;
      const label = [hhmm(t) + " UTC"];
      for (const [name, values] of series) {
        const v = values[i];
        if (!v) continue;
        const h = Math.max(2, (v / max) * plotH);
        y -= h;
        const bar = el("rect", { x: left + i * slot, y: y, width: Math.max(1.5, slot - 1), height: h, class: name }, svg);
        bar.dataset.minute = String(i);
        label.push(name + ": " + format(v));
      }
      el("title", {}, svg.lastChild, label.join("\n"));
    }
    return svg;
  }

  function sum(values) {
    return values.reduce((a, b) => a + b, 0);
  }

  async function activity(section) {
    const params = new URLSearchParams({ hours: section.dataset.hours || "3" });
    if (section.dataset.keyId) params.set("key_id", section.dataset.keyId);
    if (section.dataset.labelPrefix) params.set("label_prefix", section.dataset.labelPrefix);
    const summary = document.getElementById("chart-summary");
    let data;
    try {
      const response = await fetch("/admin/ui/api/activity?" + params, { credentials: "same-origin" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      data = await response.json();
    } catch (e) {
      summary.textContent = "Could not load the activity: " + e.message;
      return;
    }
    const count = (n) => String(Math.round(n));
    chart(document.getElementById("chart-spend"), "Spend committed per minute (USD)", data,
      [["spend", data.spend_micros]], usd);
    chart(document.getElementById("chart-decisions"), "Decisions per minute", data,
      [["allowed", data.allowed], ["replayed", data.replayed], ["denied", data.denied], ["abandoned", data.abandoned]],
      count);
    const totals = {
      spend: sum(data.spend_micros), allowed: sum(data.allowed), denied: sum(data.denied),
      replayed: sum(data.replayed), abandoned: sum(data.abandoned),
    };
    section.dataset.totalSpendMicros = String(totals.spend);
    section.dataset.totalAllowed = String(totals.allowed);
    section.dataset.totalDenied = String(totals.denied);
    section.dataset.totalReplayed = String(totals.replayed);
    summary.textContent = usd(totals.spend) + " committed · " + totals.allowed + " allowed (green) · " +
      totals.replayed + " replayed (amber) · " + totals.denied + " denied (red)" +
      (data.truncated ? " · only the first " + data.rows + " rows were read" : "");
    section.dataset.loaded = "true";
  }

  // Forms with data-confirm ask first (revoking one key); without JavaScript they go straight through.
  function confirmations() {
    document.querySelectorAll("form[data-confirm]").forEach((form) => {
      form.addEventListener("submit", (e) => {
        if (!window.confirm(form.dataset.confirm)) e.preventDefault();
      });
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    confirmations();
    tick();
    setInterval(tick, 1000);
    copyButtons();
    const section = document.getElementById("activity");
    if (section) activity(section);
  });
})();
