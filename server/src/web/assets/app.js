// vigil dashboard: draws the host page's charts with uPlot from /api/series. Served from the binary; the page has
// no inline script (Content-Security-Policy). Errors are recorded on <html data-js-errors> so tests can read them.
(function () {
  "use strict";
  var errors = [];
  function record(msg) {
    errors.push(String(msg));
    document.documentElement.setAttribute("data-js-errors", JSON.stringify(errors));
  }
  window.addEventListener("error", function (e) { record(e.message || "error"); });
  window.addEventListener("unhandledrejection", function (e) { record("unhandled rejection: " + e.reason); });
  document.addEventListener("securitypolicyviolation", function (e) { record("CSP: " + e.violatedDirective + " " + e.blockedURI); });
  var consoleError = console.error;
  console.error = function () { record(Array.prototype.join.call(arguments, " ")); consoleError.apply(console, arguments); };
  document.documentElement.setAttribute("data-js-errors", "[]");

  var COLORS = ["#0a58ca", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0969da", "#6e7781"];

  function fmt(unit) {
    return function (u, vals) {
      return vals.map(function (v) {
        if (v == null) return "";
        if (unit === "B/s") {
          var k = ["B/s", "kB/s", "MB/s", "GB/s"], i = 0;
          while (Math.abs(v) >= 1000 && i < k.length - 1) { v /= 1000; i++; }
          return v.toFixed(v < 10 ? 1 : 0) + " " + k[i];
        }
        return v.toFixed(v < 10 ? 1 : 0) + (unit ? " " + unit : "");
      });
    };
  }

  function draw(section, data, host, sync, onZoom) {
    var plot = section.querySelector(".plot");
    var width = Math.max(320, plot.clientWidth || 560);
    var cols = [data.t], series = [{}], bands = [];
    data.lines.forEach(function (line, i) {
      var c = COLORS[i % COLORS.length];
      var base = cols.length;
      cols.push(line.max, line.avg, line.min);
      series.push({ label: line.label + " max", stroke: c, width: 0.5, alpha: 0.5 });
      series.push({ label: line.label, stroke: c, width: 1.5 });
      series.push({ label: line.label + " min", stroke: c, width: 0.5, alpha: 0.5 });
      bands.push({ series: [base, base + 2], fill: c + "22" });
    });
    var opts = {
      width: width, height: 220, series: series, bands: bands,
      scales: { x: { time: true, min: data.from, max: data.to }, y: section.getAttribute("data-unit") === "%" ? { range: [0, 100] } : {} },
      axes: [{}, { values: fmt(section.getAttribute("data-unit")), size: 70 }],
      cursor: { sync: { key: sync.key, setSeries: false }, drag: { x: true, y: false } },
      legend: { show: true },
      hooks: { setSelect: [function (u) {
        if (u.select.width < 5) return;
        var a = Math.floor(u.posToVal(u.select.left, "x")), b = Math.ceil(u.posToVal(u.select.left + u.select.width, "x"));
        onZoom(a, b);
      }] }
    };
    plot.textContent = "";
    var u = new uPlot(opts, cols, plot);
    plot.addEventListener("dblclick", function () { window.location.search = ""; });
    var points = 0;
    data.lines.forEach(function (line) { line.avg.forEach(function (v) { if (v != null) points++; }); });
    section.setAttribute("data-points", String(points));
    section.setAttribute("data-drawn", "1");
    return u;
  }

  function hostPage() {
    var charts = document.getElementById("charts");
    if (!charts) return;
    var host = charts.getAttribute("data-host"), from = charts.getAttribute("data-from"), to = charts.getAttribute("data-to");
    var sync = uPlot.sync("vigil");
    var onZoom = function (a, b) { window.location.search = "?from=" + a + "&to=" + b; };
    var sections = charts.querySelectorAll("section.chart");
    var pending = sections.length;
    sections.forEach(function (section) {
      var metric = section.getAttribute("data-metric");
      var width = Math.max(320, section.clientWidth || 560);
      var q = "/api/series?host=" + encodeURIComponent(host) + "&metric=" + encodeURIComponent(metric) +
        "&from=" + from + "&to=" + to + "&points=" + Math.min(1000, width);
      fetch(q, { credentials: "same-origin" })
        .then(function (r) { if (!r.ok) throw new Error(metric + ": HTTP " + r.status); return r.json(); })
        .then(function (data) { draw(section, data, host, sync, onZoom); })
        .catch(function (e) { record(e.message || String(e)); })
        .then(function () { if (--pending === 0) document.documentElement.setAttribute("data-charts-done", "1"); });
    });
  }

  if (document.body.getAttribute("data-page") === "host") hostPage();
  else document.documentElement.setAttribute("data-charts-done", "1");
})();
