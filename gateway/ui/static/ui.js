// The admin page's script: auto-refresh of the page's content, and the usage chart.
// Loaded from the page's own origin (the Content-Security-Policy allows no inline script).
"use strict";

(function () {
  const REFRESH_MS = 5000;
  const PALETTE = ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0a7ea4", "#57606a"];

  function editing() {
    const el = document.activeElement;
    return el && el.closest && el.closest("form") && el.tagName !== "BUTTON" && el.id !== "auto-refresh";
  }

  async function refresh() {
    const box = document.getElementById("auto-refresh");
    if (!box || !box.checked || document.hidden || editing()) return;
    const response = await fetch(location.pathname + location.search, { credentials: "same-origin" });
    if (response.redirected || !response.ok) { location.reload(); return; }
    const doc = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = doc.getElementById("content");
    const current = document.getElementById("content");
    if (fresh && current) {
      current.replaceWith(fresh);
      drawChart();
    }
  }

  function setupRefresh() {
    const box = document.getElementById("auto-refresh");
    if (!box) return;
    box.checked = sessionStorage.getItem("tollhouse.refresh") === "on";
    box.addEventListener("change", () => sessionStorage.setItem("tollhouse.refresh", box.checked ? "on" : "off"));
    setInterval(() => { refresh().catch(() => {}); }, REFRESH_MS);
  }

  function seriesOf(points, metric, by) {
    const names = new Map();
    const times = [...new Set(points.map((p) => p.t))].sort((a, b) => a - b);
    for (const p of points) {
      const name = (by === "key" ? p.key_name : p.model) || "-";
      if (!names.has(name)) names.set(name, new Map());
      const value = metric === "tokens" ? p.input_tokens + p.output_tokens : parseFloat(p.cost_usd);
      const row = names.get(name);
      row.set(p.t, (row.get(p.t) || 0) + value);
    }
    return { times, names };
  }

  async function drawChart() {
    const canvas = document.getElementById("usage-chart");
    if (!canvas) return;
    const response = await fetch(canvas.dataset.src, { credentials: "same-origin" });
    if (!response.ok) return;
    const data = await response.json();
    const metric = canvas.dataset.metric, by = canvas.dataset.by;
    const start = Math.floor((data.now - data.window_s) / data.bucket_s) * data.bucket_s;
    const end = Math.floor(data.now / data.bucket_s) * data.bucket_s;
    const { names } = seriesOf(data.points, metric, by);
    const ctx = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height, left = 70, right = 170, top = 16, bottom = 34;
    ctx.clearRect(0, 0, w, h);
    ctx.font = "12px system-ui, sans-serif";
    let max = 0;
    for (const row of names.values()) for (const v of row.values()) max = Math.max(max, v);
    max = max > 0 ? max * 1.1 : 1;
    const x = (t) => left + ((t - start) / Math.max(end - start, 1)) * (w - left - right);
    const y = (v) => h - bottom - (v / max) * (h - top - bottom);
    ctx.strokeStyle = "#d8dde3"; ctx.fillStyle = "#5b6672";
    for (let i = 0; i <= 4; i++) {
      const v = (max / 4) * i;
      ctx.beginPath(); ctx.moveTo(left, y(v)); ctx.lineTo(w - right, y(v)); ctx.stroke();
      const label = metric === "tokens" ? Math.round(v).toString() : "$" + (v > 0 && v < 1 ? v.toPrecision(2) : v.toFixed(2));
      ctx.fillText(label, 4, y(v) + 4);
    }
    for (const t of [start, (start + end) / 2, end]) {
      ctx.fillText(new Date(t * 1000).toISOString().slice(5, 16).replace("T", " "), x(t) - 40, h - 12);
    }
    let n = 0;
    for (const [name, row] of names) {
      const color = PALETTE[n % PALETTE.length];
      ctx.strokeStyle = color; ctx.fillStyle = color; ctx.lineWidth = 2;
      ctx.beginPath();
      let first = true;
      for (let t = start; t <= end; t += data.bucket_s) {
        const px = x(t), py = y(row.get(t) || 0);
        if (first) { ctx.moveTo(px, py); first = false; } else { ctx.lineTo(px, py); }
      }
      ctx.stroke();
      ctx.fillRect(w - right + 12, top + n * 18, 10, 10);
      ctx.fillStyle = "#1d232a";
      ctx.fillText(name.slice(0, 22), w - right + 28, top + n * 18 + 10);
      n++;
    }
    if (n === 0) { ctx.fillStyle = "#5b6672"; ctx.fillText("nothing charged in this window", left + 10, top + 20); }
    canvas.dataset.drawn = String(n);
  }

  document.addEventListener("DOMContentLoaded", () => {
    setupRefresh();
    drawChart().catch(() => {});
  });
})();
