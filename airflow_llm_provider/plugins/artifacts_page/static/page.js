(function () {
  "use strict";

  // Model-written HTML runs only in this frame: an opaque origin (no same-origin flag), scripts
  // allowed, nothing else (no top navigation, pop-ups, forms or modals), and no network at all.
  var FRAME_SANDBOX = "allow-scripts";
  var FRAME_POLICY = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; " +
    "img-src data: blob:; font-src data:; media-src data: blob:; connect-src 'none'; " +
    "form-action 'none'; base-uri 'none'";

  var params = new URLSearchParams(window.location.search);
  var body = document.body;
  var FILTERS = ["cascade_id", "session_id", "artifact_type"];

  function byId(id) { return document.getElementById(id); }

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) { node.setAttribute(name, attrs[name]); });
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function showError(message) {
    body.setAttribute("data-state", "error");
    var box = byId("error");
    box.hidden = false;
    box.textContent = message;
  }

  function notice(message) {
    var box = byId("notice");
    box.hidden = false;
    box.textContent = message;
  }

  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (data) {
          if (!response.ok) throw new Error((data && data.detail) || ("HTTP " + response.status));
          return data;
        });
      });
  }

  var loaded = {};
  function loadScript(name) {
    if (!loaded[name]) {
      loaded[name] = new Promise(function (resolve, reject) {
        var script = document.createElement("script");
        script.src = "static/" + name; // this server's copy, relative to the page (no CDN)
        script.onload = resolve;
        script.onerror = function () { reject(new Error("could not load the chart library " + name)); };
        document.head.appendChild(script);
      });
    }
    return loaded[name];
  }

  function when(seconds) {
    var d = new Date(seconds * 1000);
    return isNaN(d.getTime()) ? "" : d.toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }

  function short(text, n) {
    text = String(text || "");
    return text.length > n ? text.slice(0, n - 1) + "\u2026" : text;
  }

  function linkTo(id) {
    var query = new URLSearchParams();
    FILTERS.forEach(function (name) { if (params.get(name)) query.set(name, params.get(name)); });
    query.set("id", id);
    return "?" + query.toString();
  }

  function fillSelect(select, values, current) {
    values.forEach(function (value) {
      if (!Array.prototype.some.call(select.options, function (o) { return o.value === value; })) {
        select.appendChild(el("option", { value: value }, short(value, 60)));
      }
    });
    if (current && !Array.prototype.some.call(select.options, function (o) { return o.value === current; })) {
      select.appendChild(el("option", { value: current }, short(current, 60)));
    }
    select.value = current || "";
  }

  function renderList(data) {
    fillSelect(byId("f-cascade"), data.choices.cascades, params.get("cascade_id"));
    fillSelect(byId("f-session"), data.choices.sessions, params.get("session_id"));
    fillSelect(byId("f-type"), [], params.get("artifact_type"));
    byId("count").textContent = data.count + (data.count === 1 ? " artifact" : " artifacts");
    var tbody = byId("artifacts").querySelector("tbody");
    var selected = params.get("id");
    data.artifacts.forEach(function (a) {
      var row = el("tr", { "data-artifact-id": a.id, "data-format": a.format });
      if (a.id === selected) row.className = "selected";
      var title = el("td");
      title.appendChild(el("a", { href: linkTo(a.id) }, short(a.title, 120)));
      row.appendChild(title);
      var type = el("td");
      type.appendChild(el("span", { "class": "badge" }, a.artifact_type));
      row.appendChild(type);
      row.appendChild(el("td", {}, a.cascade_id));
      row.appendChild(el("td", {}, a.phase));
      row.appendChild(el("td", { "class": "mono", title: a.session_id }, short(a.session_id, 14)));
      row.appendChild(el("td", { "class": "mono", title: when(a.created_at) }, when(a.created_at).slice(5, 16)));
      tbody.appendChild(row);
    });
    byId("empty").hidden = data.count > 0;
  }

  function frameDocument(html) {
    // The policy comes first, before any of the artifact's own markup can run.
    return "<!doctype html><meta charset=\"utf-8\">" +
      "<meta http-equiv=\"Content-Security-Policy\" content=\"" + FRAME_POLICY + "\">" + html;
  }

  function showHtml(target, artifact) {
    var frame = document.createElement("iframe");
    // sandbox before srcdoc and before the frame is in the document: the flags apply from the start.
    frame.setAttribute("sandbox", FRAME_SANDBOX);
    frame.setAttribute("referrerpolicy", "no-referrer");
    frame.setAttribute("id", "artifact-frame");
    frame.setAttribute("title", artifact.title);
    frame.srcdoc = frameDocument(artifact.content);
    target.appendChild(frame);
    return Promise.resolve();
  }

  function showSpec(target, artifact, why) {
    notice(why);
    var pre = el("pre", { "class": "spec" });
    var text;
    try { text = JSON.stringify(JSON.parse(artifact.content), null, 2); } catch (e) { text = artifact.content; }
    pre.textContent = text;
    target.appendChild(pre);
  }

  function showChart(target, artifact, libs) {
    // vega-embed restyles its container, so the scrolling box is a wrapper around it.
    var wrap = el("div", { "class": "chart-wrap" });
    var box = el("div", { id: "chart", "class": "chart", "data-format": artifact.format });
    wrap.appendChild(box);
    target.appendChild(wrap);
    var spec = JSON.parse(artifact.content);
    if (artifact.format === "plotly") {
      if (!libs.plotly) {
        wrap.remove();
        showSpec(target, artifact, "Plotly charts are drawn with the plotly package, not installed on this server: " + libs.install);
        return Promise.resolve();
      }
      return loadScript("plotly.min.js").then(function () {
        return window.Plotly.newPlot(box, spec.data || [], spec.layout || {}, {
          displaylogo: false, responsive: true, showLink: false, showSendToCloud: false, showEditInChartStudio: false
        });
      });
    }
    if (!libs.vega) {
      wrap.remove();
      showSpec(target, artifact, "Vega-Lite charts are drawn with the vl-convert-python package, not installed on this server: " + libs.install);
      return Promise.resolve();
    }
    return loadScript("vega-bundle.js").then(function () {
      // A chart may not fetch anything (data URLs, images, links): the spec is the model's. The
      // loader refuses every URL; "ast" makes vega-embed interpret expressions instead of compiling
      // them with Function(), which the page's policy (no unsafe-eval) would refuse.
      var refuse = function (uri) { return Promise.reject(new Error("external resources are disabled: " + uri)); };
      var loader = { load: refuse, sanitize: refuse, http: refuse, file: refuse };
      var options = { actions: false, renderer: "svg", ast: true, loader: loader };
      return window.vegaEmbed(box, spec, options);
    });
  }

  function showArtifact(id, libs) {
    return getJSON("api/artifacts/" + encodeURIComponent(id)).then(function (artifact) {
      var viewer = byId("viewer");
      viewer.hidden = false;
      viewer.setAttribute("data-artifact-id", artifact.id);
      viewer.setAttribute("data-format", artifact.format);
      byId("viewer-title").textContent = artifact.title;
      byId("viewer-meta").textContent = artifact.artifact_type + " \u00b7 " + artifact.cascade_id + " / " +
        artifact.phase + " \u00b7 " + when(artifact.created_at);
      byId("viewer-description").textContent = artifact.description || "";
      var target = byId("viewer-body");
      var drawn = artifact.format === "html" ? showHtml(target, artifact) : showChart(target, artifact, libs);
      return drawn.then(function () { viewer.setAttribute("data-drawn", "true"); });
    });
  }

  var query = new URLSearchParams();
  FILTERS.forEach(function (name) { if (params.get(name)) query.set(name, params.get(name)); });
  getJSON("api/artifacts?" + query.toString())
    .then(function (data) {
      renderList(data);
      var libs = data.libraries;
      if (!libs.plotly || !libs.vega) {
        notice("Charts are listed but not drawn without the chart libraries: " + libs.install);
      }
      var id = params.get("id");
      return id ? showArtifact(id, libs) : null;
    })
    .then(function () { body.setAttribute("data-state", "ready"); })
    .catch(function (err) { showError(String((err && err.message) || err)); });
})();
