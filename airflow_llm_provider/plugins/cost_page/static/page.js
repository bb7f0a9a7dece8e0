// The LLM-cost page: reads ./api/summary (same origin, the Airflow login cookie) and draws
// inline SVG. No library, no network beyond the API. Every value is set with textContent or
// setAttribute (never as markup), because DAG, task and model names come from users.
(function () {
  "use strict";

  var SVG = "http://www.w3.org/2000/svg";
  var PALETTE = ["#017cee", "#f59f00", "#2f9e44", "#d6336c", "#7048e8", "#1098ad",
                 "#e8590c", "#5c940d", "#ae3ec9", "#868e96"];
  var MAX_SERIES = 8; // more DAGs than this stack as "other"
  var base = location.pathname.replace(/\/?$/, "/");
  var state = { data: null };

  // -- helpers ----------------------------------------------------------------------------------
  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    setAttrs(node, attrs);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function svgEl(tag, attrs, text) {
    var node = document.createElementNS(SVG, tag);
    setAttrs(node, attrs);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function setAttrs(node, attrs) {
    Object.keys(attrs || {}).forEach(function (k) {
      if (attrs[k] !== undefined && attrs[k] !== null) node.setAttribute(k, String(attrs[k]));
    });
  }
  function tip(node, text) { node.appendChild(svgEl("title", {}, text)); return node; }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
  function money(v) {
    var n = Number(v) || 0;
    var digits = n === 0 ? 2 : Math.abs(n) < 0.01 ? 4 : Math.abs(n) < 100 ? 2 : 0;
    return "$" + n.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }
  function count(v) { return (Number(v) || 0).toLocaleString("en-US"); }
  function compact(v) {
    var n = Number(v) || 0;
    if (n >= 1e9) return (n / 1e9).toFixed(1) + "B";
    if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
    if (n >= 1e4) return (n / 1e3).toFixed(0) + "k";
    return count(n);
  }
  function pct(v) { return ((Number(v) || 0) * 100).toFixed(1).replace(/\.0$/, "") + "%"; }
  function niceMax(v) {
    if (v <= 0) return 1;
    var exp = Math.pow(10, Math.floor(Math.log10(v)));
    var steps = [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * exp >= v) return steps[i] * exp;
    return 10 * exp;
  }
  function empty(container, text) { clear(container).appendChild(el("div", { "class": "empty" }, text)); }
  function isoDay(d) { return d.toISOString().slice(0, 10); }

  // -- filters ----------------------------------------------------------------------------------
  var form = document.getElementById("filters");
  function currentParams() {
    var q = new URLSearchParams(location.search);
    return { dag_id: q.get("dag_id") || "", since: q.get("since") || "", until: q.get("until") || "" };
  }
  function fillForm(p) {
    form.elements.since.value = p.since;
    form.elements.until.value = p.until;
    form.elements.dag_id.value = p.dag_id;
  }
  function fillDagOptions(dags, selected) {
    var select = form.elements.dag_id;
    clear(select).appendChild(el("option", { value: "" }, "All DAGs"));
    var names = dags.slice();
    if (selected && names.indexOf(selected) < 0) names.push(selected);
    names.forEach(function (d) { select.appendChild(el("option", { value: d }, d)); });
    select.value = selected || "";
  }
  function apply(p) {
    var q = new URLSearchParams();
    Object.keys(p).forEach(function (k) { if (p[k]) q.set(k, p[k]); });
    var search = q.toString();
    history.replaceState(null, "", location.pathname + (search ? "?" + search : ""));
    load();
  }
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    apply({ dag_id: form.elements.dag_id.value, since: form.elements.since.value, until: form.elements.until.value });
  });
  form.elements.dag_id.addEventListener("change", function () { form.requestSubmit(); });
  Array.prototype.forEach.call(form.querySelectorAll("[data-range]"), function (button) {
    button.addEventListener("click", function () {
      var range = button.getAttribute("data-range");
      var p = { dag_id: form.elements.dag_id.value, since: "", until: "" };
      if (range !== "all") {
        var today = new Date();
        var from = new Date(today.getTime() - (Number(range) - 1) * 86400000);
        p.since = isoDay(from);
        p.until = isoDay(today);
      }
      fillForm(p);
      apply(p);
    });
  });

  // -- loading ----------------------------------------------------------------------------------
  function showError(message) {
    var box = document.getElementById("error");
    box.textContent = message;
    box.hidden = false;
    document.body.setAttribute("data-state", "error");
  }
  function load() {
    var p = currentParams();
    fillForm(p);
    document.body.setAttribute("data-state", "loading");
    var q = new URLSearchParams();
    Object.keys(p).forEach(function (k) { if (p[k]) q.set(k, p[k]); });
    fetch(base + "api/summary" + (q.toString() ? "?" + q.toString() : ""), {
      credentials: "same-origin",
      headers: { Accept: "application/json" }
    }).then(function (response) {
      return response.text().then(function (body) {
        var json = null;
        try { json = JSON.parse(body); } catch (e) { json = null; }
        if (!response.ok) {
          var detail = json && (json.detail || json.error) ? (json.detail || json.error) : body.slice(0, 200);
          if (response.status === 401) detail = "You are not logged in to Airflow (" + detail + ").";
          throw new Error("The cost API answered " + response.status + ": " + detail);
        }
        if (!json) throw new Error("The cost API did not return JSON.");
        return json;
      });
    }).then(function (data) {
      document.getElementById("error").hidden = true;
      state.data = data;
      render(data);
      document.body.setAttribute("data-state", "ready");
    }).catch(function (err) { showError(String(err.message || err)); });
  }

  // -- rendering --------------------------------------------------------------------------------
  function render(data) {
    fillDagOptions(data.dags || [], data.filters.dag_id || "");
    var f = data.filters;
    var scope = (f.dag_id ? "DAG " + f.dag_id : "all DAGs") +
      (f.since || f.until ? ", " + (f.since || "…") + " to " + (f.until || "…") : ", all time");
    document.getElementById("subtitle").textContent = scope + " · " + data.ledger;
    document.getElementById("foot").textContent = "Generated " + data.generated_at +
      " UTC. Days are UTC days. Cache savings price each cache hit like the paid calls of the same task, phase and model.";
    renderKpis(data);
    renderDays(data);
    renderModels(data);
    renderCache(data);
    renderTasks(data);
    renderBudgets(data);
  }

  function renderKpis(data) {
    var t = data.totals;
    var box = clear(document.getElementById("kpis"));
    [
      ["main", "Total cost", money(t.cost_usd), t.day_count + (t.day_count === 1 ? " day" : " days") + " with calls", "total-cost", t.cost_usd],
      ["", "LLM calls", count(t.calls), count(t.requests) + " requests", "calls", t.calls],
      ["", "Tokens", compact(t.tokens), compact(t.input_tokens) + " in · " + compact(t.output_tokens) + " out", "tokens", t.tokens],
      ["", "Cache hits", count(t.cache_hits), pct(data.cache.hit_rate) + " of calls", "cache-hits", t.cache_hits],
      ["saved", "Saved by the cache", money(t.cache_savings_usd), "estimated", "cache-savings", t.cache_savings_usd],
      ["", "DAGs", count(t.dag_count), "with LLM calls", "dags", t.dag_count]
    ].forEach(function (k) {
      var card = el("div", { "class": "kpi " + k[0], "data-kpi": k[4], "data-value": k[5] });
      card.appendChild(el("div", { "class": "label" }, k[1]));
      card.appendChild(el("div", { "class": "value" }, k[2]));
      card.appendChild(el("div", { "class": "sub" }, k[3]));
      box.appendChild(card);
    });
  }

  // A DAG keeps its color whatever the filters: its place among every DAG the caller may read.
  function dagColor(data, dag) {
    var index = (data.dags || []).indexOf(dag);
    return PALETTE[(index < 0 ? 0 : index) % PALETTE.length];
  }
  // A model keeps its color too: a hash of its name, moved on to the next free color when two
  // models of the chart would share one.
  function modelColors(names) {
    var taken = {}, colors = {};
    names.slice().sort().forEach(function (name) {
      var h = 0;
      for (var i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) >>> 0;
      var index = h % PALETTE.length;
      for (var tries = 0; tries < PALETTE.length && taken[index]; tries++) index = (index + 1) % PALETTE.length;
      taken[index] = true;
      colors[name] = PALETTE[index];
    });
    return colors;
  }
  function seriesColors(data) {
    var names = (data.per_dag || []).map(function (d) { return d.dag_id; });
    var shown = names.length > MAX_SERIES + 1 ? names.slice(0, MAX_SERIES) : names;
    var colors = {};
    shown.forEach(function (n) { colors[n] = dagColor(data, n); });
    return { shown: shown, colors: colors, other: names.length > shown.length };
  }

  function renderDays(data) {
    var box = document.getElementById("chart-days");
    var legend = clear(document.getElementById("legend-days"));
    var days = data.per_day || [];
    if (!days.length || !data.totals.calls) { empty(box, "No LLM calls in this range."); return; }
    var series = seriesColors(data);
    var W = 960, H = 300, L = 58, R = 12, T = 18, B = 34;
    var max = niceMax(Math.max.apply(null, days.map(function (d) { return d.cost_usd; })));
    var svg = svgEl("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "Cost per day, stacked by DAG", id: "svg-days" });
    var plotW = W - L - R, plotH = H - T - B;
    for (var i = 0; i <= 4; i++) {
      var y = T + plotH - (plotH * i) / 4;
      svg.appendChild(svgEl("line", { x1: L, x2: W - R, y1: y, y2: y, "class": i ? "grid" : "axis" }));
      svg.appendChild(svgEl("text", { x: L - 6, y: y + 4, "text-anchor": "end" }, money((max * i) / 4)));
    }
    var slot = plotW / days.length;
    var barW = Math.max(2, Math.min(48, slot * 0.7));
    var labelEvery = Math.ceil(days.length / 12);
    days.forEach(function (d, index) {
      var x = L + slot * index + (slot - barW) / 2;
      var yBase = T + plotH;
      var parts = [];
      var other = 0;
      Object.keys(d.by_dag).forEach(function (dag) {
        if (series.colors[dag]) parts.push([dag, d.by_dag[dag]]); else other += d.by_dag[dag];
      });
      parts.sort(function (a, b) { return series.shown.indexOf(a[0]) - series.shown.indexOf(b[0]); });
      if (other > 0) parts.push(["other", other]);
      parts.forEach(function (part) {
        var h = (part[1] / max) * plotH;
        if (h <= 0) return;
        yBase -= h;
        var rect = svgEl("rect", {
          x: x.toFixed(2), y: yBase.toFixed(2), width: barW.toFixed(2), height: Math.max(0.5, h).toFixed(2),
          fill: series.colors[part[0]] || "#adb5bd", "class": "bar", "data-day": d.day, "data-dag": part[0],
          "data-cost": part[1]
        });
        svg.appendChild(tip(rect, d.day + " · " + part[0] + ": " + money(part[1])));
      });
      if (d.cost_usd > 0 && days.length <= 31) {
        svg.appendChild(svgEl("text", {
          x: x + barW / 2, y: yBase - 4, "text-anchor": "middle", "class": "total-label", "data-day-total": d.day
        }, money(d.cost_usd)));
      }
      if (index % labelEvery === 0) {
        svg.appendChild(svgEl("text", { x: x + barW / 2, y: H - B + 16, "text-anchor": "middle" }, d.day.slice(5)));
      }
    });
    clear(box).appendChild(svg);
    series.shown.forEach(function (name) { legend.appendChild(legendItem(series.colors[name], name)); });
    if (series.other) legend.appendChild(legendItem("#adb5bd", "other DAGs"));
  }

  function legendItem(color, name, amount) {
    var item = el("div", { "class": "item" });
    item.appendChild(el("span", { "class": "sw", style: "background:" + color }));
    item.appendChild(el("span", { "class": "name", title: name }, name));
    if (amount !== undefined) item.appendChild(el("span", { "class": "amt" }, amount));
    return item;
  }

  function arcPath(cx, cy, r, r0, a0, a1) {
    var large = a1 - a0 > Math.PI ? 1 : 0;
    function pt(rad, a) { return [cx + rad * Math.sin(a), cy - rad * Math.cos(a)]; }
    var p1 = pt(r, a0), p2 = pt(r, a1), p3 = pt(r0, a1), p4 = pt(r0, a0);
    return "M" + p1[0].toFixed(2) + " " + p1[1].toFixed(2) +
      " A" + r + " " + r + " 0 " + large + " 1 " + p2[0].toFixed(2) + " " + p2[1].toFixed(2) +
      " L" + p3[0].toFixed(2) + " " + p3[1].toFixed(2) +
      " A" + r0 + " " + r0 + " 0 " + large + " 0 " + p4[0].toFixed(2) + " " + p4[1].toFixed(2) + " Z";
  }

  function renderModels(data) {
    var box = document.getElementById("chart-models");
    var legend = clear(document.getElementById("legend-models"));
    var models = (data.per_model || []).filter(function (m) { return m.cost_usd > 0; });
    if (!models.length) { empty(box, "No paid calls."); return; }
    var total = models.reduce(function (s, m) { return s + m.cost_usd; }, 0);
    var svg = svgEl("svg", { viewBox: "0 0 220 220", role: "img", "aria-label": "Cost per model", id: "svg-models" });
    var angle = 0;
    var colors = modelColors(models.map(function (m) { return m.model; }));
    models.forEach(function (m) {
      var color = colors[m.model];
      var sweep = (m.cost_usd / total) * 2 * Math.PI;
      var shape;
      if (sweep >= 2 * Math.PI - 1e-6) {
        shape = svgEl("circle", { cx: 110, cy: 110, r: 84, fill: "none", stroke: color, "stroke-width": 36 });
      } else {
        shape = svgEl("path", { d: arcPath(110, 110, 102, 66, angle, angle + sweep), fill: color });
      }
      setAttrs(shape, { "class": "slice", "data-model": m.model, "data-cost": m.cost_usd });
      svg.appendChild(tip(shape, m.model + ": " + money(m.cost_usd) + " (" + pct(m.share) + ")"));
      angle += sweep;
      legend.appendChild(legendItem(color, m.model, money(m.cost_usd) + " · " + pct(m.share)));
    });
    svg.appendChild(svgEl("text", { x: 110, y: 112, "text-anchor": "middle", "class": "big", id: "models-total" }, money(total)));
    svg.appendChild(svgEl("text", { x: 110, y: 132, "text-anchor": "middle" }, models.length + (models.length === 1 ? " model" : " models")));
    clear(box).appendChild(svg);
  }

  function renderCache(data) {
    var box = document.getElementById("chart-cache");
    var c = data.cache;
    if (!c.calls) { empty(box, "No calls in this range."); return; }
    var W = 460, H = 200;
    var svg = svgEl("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "Cache hits and savings", id: "svg-cache" });
    // A ring: share of calls answered by the cache.
    var sweep = Math.min(1, c.hit_rate) * 2 * Math.PI;
    svg.appendChild(svgEl("circle", { cx: 90, cy: 95, r: 62, fill: "none", "class": "track-ring", "stroke-width": 18 }));
    if (sweep >= 2 * Math.PI - 1e-6) {
      svg.appendChild(svgEl("circle", { cx: 90, cy: 95, r: 62, fill: "none", stroke: "#2f9e44", "stroke-width": 18, "class": "hit-ring" }));
    } else if (sweep > 0) {
      svg.appendChild(svgEl("path", { d: arcPath(90, 95, 71, 53, 0, sweep), fill: "#2f9e44", "class": "hit-ring" }));
    }
    svg.appendChild(svgEl("text", { x: 90, y: 98, "text-anchor": "middle", "class": "big", id: "cache-rate" }, pct(c.hit_rate)));
    svg.appendChild(svgEl("text", { x: 90, y: 117, "text-anchor": "middle" }, count(c.hits) + " of " + count(c.calls) + " calls"));
    // Bars: what was paid against what the cache saved.
    var paid = data.totals.cost_usd, saved = c.savings_usd;
    var max = Math.max(paid + saved, 1e-9);
    var bx = 190, bw = W - bx - 10;
    [["Paid", paid, "#017cee", "paid"], ["Saved by the cache (est.)", saved, "#2f9e44", "saved"]].forEach(function (row, i) {
      var y = 40 + i * 62;
      svg.appendChild(svgEl("text", { x: bx, y: y - 6 }, row[0]));
      svg.appendChild(svgEl("rect", { x: bx, y: y, width: bw, height: 16, rx: 4, "class": "track" }));
      svg.appendChild(tip(svgEl("rect", {
        x: bx, y: y, width: Math.max(row[1] > 0 ? 2 : 0, (row[1] / max) * bw).toFixed(2), height: 16, rx: 4,
        fill: row[2], "class": "bar", "data-cache": row[3], "data-cost": row[1]
      }), row[0] + ": " + money(row[1])));
      svg.appendChild(svgEl("text", { x: W - 10, y: y - 6, "text-anchor": "end", "class": "total-label", "data-cache-label": row[3] }, money(row[1])));
    });
    svg.appendChild(svgEl("text", { x: bx, y: 170 }, "Without the cache: " + money(paid + saved) +
      (paid > 0 ? " (+" + pct(saved / paid) + ")" : "")));
    clear(box).appendChild(svg);
  }

  function renderTasks(data) {
    var body = clear(document.querySelector("#top-tasks tbody"));
    var tasks = data.top_tasks || [];
    if (!tasks.length) {
      var row = el("tr");
      var cell = el("td", { colspan: 6, "class": "empty" }, "No tasks in this range.");
      row.appendChild(cell);
      body.appendChild(row);
      return;
    }
    var top = tasks[0].cost_usd || 1;
    tasks.forEach(function (t) {
      var row = el("tr", { "data-dag": t.dag_id, "data-task": t.task_id, "data-cost": t.cost_usd });
      row.appendChild(el("td", { "class": "dag", title: t.dag_id }, t.dag_id));
      row.appendChild(el("td", {}, t.task_id));
      row.appendChild(el("td", { "class": "num" }, count(t.calls) + (t.cache_hits ? " (" + count(t.cache_hits) + " cached)" : "")));
      row.appendChild(el("td", { "class": "num" }, compact(t.input_tokens + t.output_tokens)));
      row.appendChild(el("td", { "class": "num" }, money(t.cost_usd)));
      var barCell = el("td", { "class": "bar-col", title: pct(t.share) + " of the total" });
      var bar = el("div", { "class": "share-bar" });
      bar.appendChild(el("span", { style: "width:" + Math.max(1, (t.cost_usd / top) * 100).toFixed(1) + "%" }));
      barCell.appendChild(bar);
      row.appendChild(barCell);
      body.appendChild(row);
    });
  }

  function renderBudgets(data) {
    var box = document.getElementById("chart-budgets");
    var budgets = data.budgets || [];
    document.getElementById("budget-hint").textContent = budgets.length ? "today (UTC) " + data.today + " or the latest run" : "";
    if (!budgets.length) { empty(box, "No budgets declared for these DAGs."); return; }
    var W = 460, rowH = 50, H = budgets.length * rowH + 10;
    var svg = svgEl("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "Budget usage", id: "svg-budgets" });
    var colors = { ok: "#2f9e44", warning: "#e8890c", over: "#d6336c" };
    budgets.forEach(function (b, i) {
      var y = 22 + i * rowH;
      var scope = b.dag_id ? b.dag_id : b.tag ? "tag " + b.tag : "all DAGs";
      svg.appendChild(svgEl("text", { x: 0, y: y - 6 }, b.name + " · " + scope + " · " + (b.period === "run" ? b.window : "per day")));
      svg.appendChild(svgEl("text", { x: W, y: y - 6, "text-anchor": "end", "class": "total-label", "data-budget-label": b.name },
        money(b.spent_usd) + " of " + money(b.limit_usd) + " (" + pct(b.ratio) + ")"));
      svg.appendChild(svgEl("rect", { x: 0, y: y, width: W, height: 14, rx: 4, "class": "track" }));
      svg.appendChild(tip(svgEl("rect", {
        x: 0, y: y, width: (Math.min(1, b.ratio) * W).toFixed(2), height: 14, rx: 4, fill: colors[b.state] || "#868e96",
        "class": "bar", "data-budget": b.name, "data-state": b.state, "data-spent": b.spent_usd, "data-limit": b.limit_usd
      }), b.name + ": " + b.state));
      if (b.soft_ratio) {
        var sx = Math.min(1, b.soft_ratio) * W;
        svg.appendChild(svgEl("line", { x1: sx, x2: sx, y1: y - 3, y2: y + 17, stroke: "#e8890c", "stroke-width": 2 }));
      }
    });
    clear(box).appendChild(svg);
  }

  // Opened on its own (Airflow 2's menu, a bookmark) rather than inside Airflow 3's UI: a way back.
  if (window.top === window.self) document.getElementById("back").hidden = false;

  load();
})();
