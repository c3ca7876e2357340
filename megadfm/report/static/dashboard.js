
"use strict";
var RUN = JSON.parse(document.getElementById("run-data").textContent);
var PNG_MODE = location.hash.indexOf("png") >= 0;
var ERRORS = [];
var CHARTS = 0;
window.addEventListener("error", function (e) { ERRORS.push(String(e.message)); markErrors(); });
function markErrors() {
  if (!ERRORS.length) return;
  document.getElementById("selfcheck").textContent = "RENDER_ERROR: " + ERRORS.join(" | ");
  document.body.setAttribute("data-render", "error");
}

var VIRIDIS = [[68,1,84],[72,40,120],[62,73,137],[49,104,142],[38,130,142],[31,158,137],[53,183,121],[110,206,88],[181,222,43],[253,231,37]];
function ramp(f) {
  f = Math.max(0, Math.min(1, f)); var x = f * (VIRIDIS.length - 1), i = Math.min(VIRIDIS.length - 2, Math.floor(x)), u = x - i;
  var a = VIRIDIS[i], b = VIRIDIS[i + 1];
  return "rgb(" + [0, 1, 2].map(function (k) { return Math.round(a[k] + (b[k] - a[k]) * u); }).join(",") + ")";
}
function bucketColor(i, n) { return ramp(n <= 1 ? 0 : 0.88 * i / (n - 1)); }
var PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"];
function esc(s) { return String(s).replace(/[&<>"]/g, function (c) { return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]; }); }
function ok(v) { return typeof v === "number" && isFinite(v); }
function fmt(v) {
  if (!ok(v)) return "n/a";
  var a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(2);
  return String(+v.toPrecision(4));
}
function col(table, key) { return (table.cols && table.cols[key]) || null; }
var BUCKETS = (RUN.meta.buckets || []);
function bucketLabel(b) { return b.label || b.name; }

function niceTicks(lo, hi, n) {
  if (!(hi > lo)) hi = lo + 1;
  var raw = (hi - lo) / n, p = Math.pow(10, Math.floor(Math.log10(raw))), e = raw / p;
  var step = p * (e >= 7.5 ? 10 : e >= 3.5 ? 5 : e >= 1.5 ? 2 : 1), out = [];
  for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}
function logTicks(lo, hi) {
  var out = [];
  for (var e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
    [1, 2, 5].forEach(function (m) { var v = m * Math.pow(10, e); if (v >= lo && v <= hi) out.push(v); });
  }
  if (out.length > 12) out = out.filter(function (v) { return Math.abs(Math.log10(v) - Math.round(Math.log10(v))) < 1e-9; });
  return out;
}
function nearest(xs, x) {
  var lo = 0, hi = xs.length - 1;
  if (hi < 0) return -1;
  while (hi - lo > 1) { var mid = (lo + hi) >> 1; if (xs[mid] < x) lo = mid; else hi = mid; }
  return Math.abs(xs[lo] - x) <= Math.abs(xs[hi] - x) ? lo : hi;
}

var TIP = document.getElementById("tooltip");
function showTip(ev, htmlText) {
  TIP.innerHTML = htmlText; TIP.style.display = "block";
  var x = ev.clientX + 14, y = ev.clientY + 14;
  if (x + TIP.offsetWidth > window.innerWidth) x = ev.clientX - TIP.offsetWidth - 10;
  if (y + TIP.offsetHeight > window.innerHeight) y = ev.clientY - TIP.offsetHeight - 10;
  TIP.style.left = x + "px"; TIP.style.top = y + "px";
}
function hideTip() { TIP.style.display = "none"; }

var HIDDEN = {};
var SPIKE_STEPS = RUN.spikes.map(function (e) { return e.step; });
function spikeMarkers() {
  return RUN.spikes.map(function (e, i) {
    return {x: e.step, index: i, color: e.label === "weighting" ? "#1f77b4" : "#d62728",
            title: "spike at step " + e.step + " [" + e.label + ", " + e.action + "]: loss " + fmt(e.loss) +
                   (e.loss_expected ? " (expected <= " + fmt(e.loss_expected[1]) + ")" : "") + "; click for details"};
  });
}

// The y range a point needs: its value, and its interval [lo, hi] when the series has error bars
// (a log chart drops a non-positive lower bound, which it cannot draw).
function pointExtent(s, i, ylog) {
  var y = s.ys[i], lo = s.lo ? s.lo[i] : y, hi = s.hi ? s.hi[i] : y;
  return [ok(lo) && (!ylog || lo > 0) ? Math.min(lo, y) : y, ok(hi) ? Math.max(hi, y) : y];
}
// Vertical error bars with caps, for series with lo/hi arrays (evaluation scores and their stderr).
function errorBars(ser, X, Y, inPlot, ylog) {
  if (!ser.lo || !ser.hi) return "";
  var out = "";
  for (var i = 0; i < ser.ys.length; i++) {
    var lo = ser.lo[i], hi = ser.hi[i];
    if (!inPlot(i) || !ok(lo) || !ok(hi) || (ylog && lo <= 0)) continue;
    var x = X(ser.xs[i]), y0 = Y(lo).toFixed(1), y1 = Y(hi).toFixed(1);
    out += '<path class="error-bar" d="M' + x.toFixed(1) + " " + y0 + "V" + y1 + "M" + (x - 3).toFixed(1) + " " + y0 + "h6M" +
           (x - 3).toFixed(1) + " " + y1 + 'h6" stroke="' + ser.color + '" stroke-opacity="0.6" stroke-width="1.2" fill="none"/>';
  }
  return out;
}

// opt: {title, series: [{name, color, xs, ys, dash, width, points, lo, hi}], ylog, hlines: [{y, label, color}], markers, yLabel,
//       zero, yClamp: [lo, hi] (linear charts), width, height, legendCols}
function lineChart(id, opt) {
  var el = document.getElementById(id);
  var hidden = HIDDEN[id] || (HIDDEN[id] = {});
  var all = opt.series.filter(function (s) { return s.ys && s.ys.some(function (v) { return ok(v) && (!opt.ylog || v > 0); }); });
  if (!all.length) { el.innerHTML = '<div class="empty">no data yet</div>'; return false; }
  var series = all.filter(function (s) { return !hidden[s.name]; });
  var W = opt.width || 940, legendCols = opt.legendCols || 3, legendRows = Math.ceil(all.length / legendCols);
  var M = {l: 66, r: 18, t: 30, b: 40}, PH = opt.height || 300, H = M.t + PH + M.b + legendRows * 15 + 6;
  var xmin = Infinity, xmax = -Infinity, ymin = Infinity, ymax = -Infinity;
  series.forEach(function (s) {
    for (var i = 0; i < s.ys.length; i++) {
      var y = s.ys[i]; if (!ok(y) || (opt.ylog && y <= 0)) continue;
      var ext = pointExtent(s, i, opt.ylog);
      xmin = Math.min(xmin, s.xs[i]); xmax = Math.max(xmax, s.xs[i]); ymin = Math.min(ymin, ext[0]); ymax = Math.max(ymax, ext[1]);
    }
  });
  (opt.hlines || []).forEach(function (h) { if (ok(h.y) && (!opt.ylog || h.y > 0)) { ymin = Math.min(ymin, h.y); ymax = Math.max(ymax, h.y); } });
  if (!isFinite(xmin)) { xmin = 0; xmax = 1; ymin = opt.ylog ? 1 : 0; ymax = opt.ylog ? 10 : 1; }
  if (xmax === xmin) xmax = xmin + 1;
  if (opt.ylog) { ymin /= 1.25; ymax *= 1.25; }
  else { var pad = (ymax - ymin) * 0.06 || Math.abs(ymax) * 0.1 || 1; ymin -= pad; ymax += pad; if (opt.zero && ymin > 0) ymin = 0; }
  // a bounded quantity (a score in %) keeps its padding inside its bounds: no negative-percent ticks
  if (opt.yClamp) { ymin = Math.max(ymin, opt.yClamp[0]); ymax = Math.min(ymax, opt.yClamp[1]); }
  var pw = W - M.l - M.r;
  function X(x) { return M.l + (x - xmin) / (xmax - xmin) * pw; }
  function Y(y) {
    var f = opt.ylog ? (Math.log(y) - Math.log(ymin)) / (Math.log(ymax) - Math.log(ymin)) : (y - ymin) / (ymax - ymin);
    return M.t + PH - f * PH;
  }
  var s = '<svg width="' + W + '" height="' + H + '" viewBox="0 0 ' + W + " " + H + '" font-family="sans-serif" font-size="11">';
  s += '<rect x="0" y="0" width="' + W + '" height="' + H + '" fill="#ffffff"/>';
  s += '<text x="' + M.l + '" y="18" font-size="13" font-weight="bold" fill="#222">' + esc(opt.title) + "</text>";
  var yt = opt.ylog ? logTicks(ymin, ymax) : niceTicks(ymin, ymax, 6);
  yt.forEach(function (v) {
    var y = Y(v).toFixed(1);
    s += '<line x1="' + M.l + '" x2="' + (W - M.r) + '" y1="' + y + '" y2="' + y + '" stroke="#ececec"/>';
    s += '<text x="' + (M.l - 6) + '" y="' + y + '" dy="4" text-anchor="end" fill="#555">' + fmt(v) + "</text>";
  });
  niceTicks(xmin, xmax, 8).filter(function (v) { return Math.abs(v - Math.round(v)) < 1e-9; }).forEach(function (v) {
    var x = X(v).toFixed(1);
    s += '<line x1="' + x + '" x2="' + x + '" y1="' + M.t + '" y2="' + (M.t + PH) + '" stroke="#f3f3f3"/>';
    s += '<text x="' + x + '" y="' + (M.t + PH + 15) + '" text-anchor="middle" fill="#555">' + v + "</text>";
  });
  s += '<rect x="' + M.l + '" y="' + M.t + '" width="' + pw + '" height="' + PH + '" fill="none" stroke="#bbb"/>';
  s += '<text x="' + (M.l + pw / 2) + '" y="' + (M.t + PH + 31) + '" text-anchor="middle" fill="#555">optimizer step</text>';
  if (opt.yLabel) s += '<text transform="translate(14,' + (M.t + PH / 2) + ') rotate(-90)" text-anchor="middle" fill="#555">' + esc(opt.yLabel) + "</text>";
  (opt.hlines || []).forEach(function (h) {
    if (!ok(h.y) || (opt.ylog && h.y <= 0)) return;
    var y = Y(h.y).toFixed(1);
    s += '<line x1="' + M.l + '" x2="' + (W - M.r) + '" y1="' + y + '" y2="' + y + '" stroke="' + (h.color || "#d62728") +
         '" stroke-dasharray="6 4" stroke-width="1.5"/>';
    s += '<text x="' + (W - M.r - 4) + '" y="' + y + '" dy="-4" text-anchor="end" fill="' + (h.color || "#d62728") + '">' + esc(h.label) + "</text>";
  });
  series.forEach(function (ser) {
    var d = "", pen = false, dots = "";
    for (var i = 0; i < ser.ys.length; i++) {
      var y = ser.ys[i];
      if (!ok(y) || (opt.ylog && y <= 0) || ser.xs[i] < xmin || ser.xs[i] > xmax) { pen = false; continue; }
      d += (pen ? "L" : "M") + X(ser.xs[i]).toFixed(1) + " " + Y(y).toFixed(1); pen = true;
      if (ser.points) dots += '<circle cx="' + X(ser.xs[i]).toFixed(1) + '" cy="' + Y(y).toFixed(1) + '" r="2.5" fill="' + ser.color + '"/>';
    }
    s += '<path d="' + d + '" fill="none" stroke="' + ser.color + '" stroke-width="' + (ser.width || 1.5) + '"' +
         (ser.dash ? ' stroke-dasharray="' + ser.dash + '"' : "") + ' stroke-linejoin="round"/>' + dots;
    s += errorBars(ser, X, Y, function (i) { return ok(ser.ys[i]) && ser.xs[i] >= xmin && ser.xs[i] <= xmax; }, opt.ylog);
  });
  (opt.markers || []).forEach(function (m) {
    if (m.x < xmin || m.x > xmax) return;
    var x = X(m.x).toFixed(1);
    s += '<g class="spike-marker" data-spike="' + m.index + '" cursor="pointer"><title>' + esc(m.title) + "</title>" +
         '<line x1="' + x + '" x2="' + x + '" y1="' + M.t + '" y2="' + (M.t + PH) + '" stroke="' + m.color + '" stroke-opacity="0.45" stroke-width="1.5"/>' +
         '<path d="M' + (x - 6) + " " + (M.t - 9) + "L" + (+x + 6) + " " + (M.t - 9) + "L" + x + " " + (M.t + 1) + 'Z" fill="' + m.color + '"/></g>';
  });
  var ly = M.t + PH + 50, cw = (W - M.l) / legendCols;
  all.forEach(function (ser, i) {
    var lx = M.l + (i % legendCols) * cw, yy = ly + Math.floor(i / legendCols) * 15, off = hidden[ser.name];
    s += '<g class="legend-item" data-name="' + esc(ser.name) + '" cursor="pointer" opacity="' + (off ? 0.35 : 1) + '">' +
         '<line x1="' + lx + '" x2="' + (lx + 18) + '" y1="' + (yy - 4) + '" y2="' + (yy - 4) + '" stroke="' + ser.color + '" stroke-width="3"' +
         (ser.dash ? ' stroke-dasharray="' + ser.dash + '"' : "") + "/>" +
         '<text x="' + (lx + 23) + '" y="' + yy + '" fill="#333">' + esc(ser.name) + "</text></g>";
  });
  s += '<line class="hover-line" x1="0" x2="0" y1="' + M.t + '" y2="' + (M.t + PH) + '" stroke="#888" stroke-dasharray="3 3" visibility="hidden"/>';
  s += '<rect class="overlay" x="' + M.l + '" y="' + M.t + '" width="' + pw + '" height="' + PH + '" fill="#ffffff" fill-opacity="0"/>';
  s += "</svg>";
  el.innerHTML = s;
  CHARTS += 1;
  if (PNG_MODE) return true;
  var svg = el.querySelector("svg"), overlay = svg.querySelector(".overlay"), hl = svg.querySelector(".hover-line");
  overlay.addEventListener("mousemove", function (ev) {
    var box = svg.getBoundingClientRect(), x = xmin + (ev.clientX - box.left - M.l) / pw * (xmax - xmin);
    var lines = [], step = null;
    series.forEach(function (ser) {
      var i = nearest(ser.xs, x); if (i < 0) return;
      if (step === null) step = ser.xs[i];
      lines.push('<span class="swatch" style="background:' + ser.color + '"></span>' + esc(ser.name) + ": <b>" + fmt(ser.ys[i]) + "</b>" +
                 (ser.lo && ok(ser.lo[i]) && ok(ser.hi[i]) ? " [" + fmt(ser.lo[i]) + ", " + fmt(ser.hi[i]) + "]" : "") +
                 (ser.xs[i] !== step ? " (step " + ser.xs[i] + ")" : ""));
    });
    if (step !== null) { hl.setAttribute("x1", X(step)); hl.setAttribute("x2", X(step)); hl.setAttribute("visibility", "visible"); }
    var sp = SPIKE_STEPS.indexOf(step);
    showTip(ev, "<b>step " + step + "</b>" + (sp >= 0 ? ' <span class="label-' + RUN.spikes[sp].label + '">spike (' + RUN.spikes[sp].label + ")</span>" : "") +
                "<br>" + lines.join("<br>"));
  });
  overlay.addEventListener("mouseleave", function () { hideTip(); hl.setAttribute("visibility", "hidden"); });
  svg.querySelectorAll(".spike-marker").forEach(function (g) {
    g.addEventListener("click", function () { showSpike(+g.getAttribute("data-spike"), true); });
  });
  svg.querySelectorAll(".legend-item").forEach(function (g) {
    g.addEventListener("click", function () { var n = g.getAttribute("data-name"); hidden[n] = !hidden[n]; lineChart(id, opt); });
  });
  return true;
}

function bucketSeries(table, metric, dash) {
  var steps = table.steps || [];
  return BUCKETS.map(function (b, i) {
    var key = (table === RUN.val ? "val/" : "train/") + b.name + "/" + metric;
    return {name: bucketLabel(b), color: bucketColor(i, BUCKETS.length), xs: steps, ys: col(table, key) || [], dash: dash};
  });
}

function heatmap(id, mode) {
  var el = document.getElementById(id), steps = RUN.train.steps, nb = BUCKETS.length;
  if (!steps.length || !nb) { el.innerHTML = '<div class="empty">no data yet</div>'; return false; }
  var rows = BUCKETS.map(function (b) {
    var loss = col(RUN.train, "train/" + b.name + "/loss") || [], ce = col(RUN.train, "train/" + b.name + "/ce") || [];
    var ema = col(RUN.train, "train/" + b.name + "/loss_ema") || [], share = col(RUN.train, "train/" + b.name + "/contribution") || [];
    var total = col(RUN.train, "train/loss") || [];
    return steps.map(function (_, j) {
      if (mode === "ce") return ce[j];
      if (mode === "loss") return ok(loss[j]) && loss[j] > 0 ? Math.log10(loss[j]) : null;
      if (mode === "ratio") return ok(loss[j]) && ok(ema[j]) && ema[j] > 0 ? loss[j] / ema[j] : null;
      return ok(share[j]) && ok(total[j]) && total[j] > 0 ? share[j] / total[j] : null;
    });
  });
  var ncol = Math.min(steps.length, 320), per = steps.length / ncol, cells = [], vals = [];
  for (var b = 0; b < nb; b++) {
    cells.push([]);
    for (var c = 0; c < ncol; c++) {
      var lo = Math.floor(c * per), hi = Math.max(lo + 1, Math.floor((c + 1) * per)), sum = 0, n = 0;
      for (var j = lo; j < hi; j++) if (ok(rows[b][j])) { sum += rows[b][j]; n++; }
      var v = n ? sum / n : null; cells[b].push(v); if (v !== null) vals.push(v);
    }
  }
  vals.sort(function (a, b) { return a - b; });
  var vlo = vals.length ? vals[Math.floor(0.02 * (vals.length - 1))] : 0, vhi = vals.length ? vals[Math.ceil(0.98 * (vals.length - 1))] : 1;
  if (mode === "ratio") { var dev = Math.max(Math.abs(1 - vlo), Math.abs(vhi - 1), 0.05); vlo = 1 - dev; vhi = 1 + dev; }
  if (!(vhi > vlo)) vhi = vlo + 1e-9;
  var W = 940, M = {l: 250, r: 70, t: 34, b: 40}, rowH = Math.max(14, Math.min(26, Math.floor(320 / nb))), PH = rowH * nb, H = M.t + PH + M.b;
  var pw = W - M.l - M.r, cw = pw / ncol;
  var s = '<svg width="' + W + '" height="' + H + '" viewBox="0 0 ' + W + " " + H + '" font-family="sans-serif" font-size="11">';
  s += '<rect x="0" y="0" width="' + W + '" height="' + H + '" fill="#ffffff"/>';
  var names = {ce: "unweighted CE per masked token", ratio: "weighted loss / its EMA", loss: "log10 weighted loss", share: "share of the total loss"};
  s += '<text x="' + 10 + '" y="18" font-size="13" font-weight="bold" fill="#222">Step \u00d7 mask-ratio bucket: ' + names[mode] + "</text>";
  for (b = 0; b < nb; b++) {
    var y = M.t + (nb - 1 - b) * rowH;  // small r at the bottom
    s += '<text x="' + (M.l - 6) + '" y="' + (y + rowH / 2 + 4) + '" text-anchor="end" fill="#333">' + esc(bucketLabel(BUCKETS[b])) + "</text>";
    for (c = 0; c < ncol; c++) {
      var v = cells[b][c];
      var fill = v === null ? "#f0f0f0" : (mode === "ratio" ? divergent((v - vlo) / (vhi - vlo)) : ramp((v - vlo) / (vhi - vlo)));
      s += '<rect x="' + (M.l + c * cw).toFixed(2) + '" y="' + y + '" width="' + (cw + 0.6).toFixed(2) + '" height="' + rowH + '" fill="' + fill + '"/>';
    }
  }
  RUN.spikes.forEach(function (e, i) {
    var j = nearest(steps, e.step); if (j < 0) return;
    var x = M.l + (Math.floor(j / per) + 0.5) * cw;
    s += '<g class="spike-marker" data-spike="' + i + '" cursor="pointer"><title>spike at step ' + e.step + " [" + esc(e.label) + "]</title>" +
         '<path d="M' + (x - 5) + " " + (M.t - 10) + "L" + (x + 5) + " " + (M.t - 10) + "L" + x + " " + (M.t - 1) + 'Z" fill="' +
         (e.label === "weighting" ? "#1f77b4" : "#d62728") + '"/></g>';
  });
  niceTicks(steps[0], steps[steps.length - 1], 8).filter(function (v) { return v === Math.round(v); }).forEach(function (v) {
    var x = M.l + (Math.min(ncol - 1, Math.floor(nearest(steps, v) / per)) + 0.5) * cw;
    s += '<text x="' + x.toFixed(1) + '" y="' + (M.t + PH + 15) + '" text-anchor="middle" fill="#555">' + v + "</text>";
  });
  s += '<text x="' + (M.l + pw / 2) + '" y="' + (M.t + PH + 31) + '" text-anchor="middle" fill="#555">optimizer step</text>';
  for (var k = 0; k < 40; k++) {
    var f = k / 39, yy = M.t + PH - (k + 1) * PH / 40;
    s += '<rect x="' + (W - M.r + 12) + '" y="' + yy.toFixed(1) + '" width="14" height="' + (PH / 40 + 0.6).toFixed(1) +
         '" fill="' + (mode === "ratio" ? divergent(f) : ramp(f)) + '"/>';
  }
  s += '<text x="' + (W - M.r + 30) + '" y="' + (M.t + 8) + '" fill="#333">' + fmt(vhi) + "</text>";
  s += '<text x="' + (W - M.r + 30) + '" y="' + (M.t + PH) + '" fill="#333">' + fmt(vlo) + "</text>";
  s += '<rect class="overlay" x="' + M.l + '" y="' + M.t + '" width="' + pw + '" height="' + PH + '" fill="#ffffff" fill-opacity="0"/></svg>';
  el.innerHTML = s;
  CHARTS += 1;
  if (PNG_MODE) return true;
  var svg = el.querySelector("svg");
  svg.querySelector(".overlay").addEventListener("mousemove", function (ev) {
    var box = svg.getBoundingClientRect(), c = Math.floor((ev.clientX - box.left - M.l) / cw), bb = nb - 1 - Math.floor((ev.clientY - box.top - M.t) / rowH);
    if (c < 0 || c >= ncol || bb < 0 || bb >= nb) return hideTip();
    var lo = Math.floor(c * per), hi = Math.max(lo + 1, Math.floor((c + 1) * per)) - 1;
    showTip(ev, "<b>" + esc(bucketLabel(BUCKETS[bb])) + "</b><br>steps " + steps[lo] + (hi > lo ? "\u2013" + steps[hi] : "") + "<br>" +
                names[mode] + ": <b>" + fmt(cells[bb][c]) + "</b>");
  });
  svg.querySelector(".overlay").addEventListener("mouseleave", hideTip);
  svg.querySelectorAll(".spike-marker").forEach(function (g) { g.addEventListener("click", function () { showSpike(+g.getAttribute("data-spike"), true); }); });
  return true;
}
function divergent(f) {  // blue (below its EMA) - white - red (above)
  f = Math.max(0, Math.min(1, f));
  var a = f < 0.5 ? [49, 104, 180] : [214, 39, 40], u = f < 0.5 ? (0.5 - f) * 2 : (f - 0.5) * 2;
  return "rgb(" + a.map(function (c) { return Math.round(255 + (c - 255) * u); }).join(",") + ")";
}

function table(headers, rows, rowAttrs) {
  var h = "<table><tr>" + headers.map(function (x) { return "<th>" + esc(x) + "</th>"; }).join("") + "</tr>";
  rows.forEach(function (r, i) { h += "<tr" + (rowAttrs ? rowAttrs(i) : "") + ">" + r.map(function (x) { return "<td>" + x + "</td>"; }).join("") + "</tr>"; });
  return h + "</table>";
}
function rangeText(e) { return e ? "[" + fmt(e[0]) + ", " + fmt(e[1]) + "]" : "n/a"; }

function showSpike(i, scroll) {
  var e = RUN.spikes[i], el = document.getElementById("spike-detail");
  if (!e) return;
  var h = '<h3>Spike at step ' + e.step + ': <span class="label-' + esc(e.label) + '">' + esc(e.label) + "</span> (action: " + esc(e.action) +
          (e.skipped ? ", update skipped" : "") + ")</h3>";
  h += "<p>loss <b>" + fmt(e.loss) + "</b> (expected " + rangeText(e.loss_expected) + "), unweighted CE <b>" + fmt(e.ce) + "</b> (expected " +
       rangeText(e.ce_expected) + "); the weights explain " + fmt(e.weighting_var_explained) + " of the spread of w\u00b7CE across sequences" +
       (e.lr !== undefined && e.lr !== null ? "; lr " + fmt(e.lr) : "") + ".</p>";
  h += "<p><b>What fired</b></p>" + table(["series", "value", "z", "expected", "why"], (e.fired || []).map(function (f) {
    return [esc(f.key), fmt(f.value), fmt(f.z), rangeText(f.expected), esc(f.reason)];
  }));
  h += "<p><b>Buckets involved</b></p>" + table(["bucket", "w\u00b7CE", "expected", "CE", "expected", "share of loss", "mean weight", "sequences", "masked tokens"],
    (e.buckets || []).map(function (b) {
      return [esc(b.label), fmt(b.loss), rangeText(b.loss_expected), fmt(b.ce), rangeText(b.ce_expected), fmt(b.contribution), fmt(b.mean_weight),
              fmt(b.sequences), fmt(b.masked_tokens)];
    }));
  if (e.grad_norms) {
    h += "<p><b>Gradient norms</b> " + Object.keys(e.grad_norms).map(function (k) {
      return esc(k.replace("grad/", "")) + " " + fmt(e.grad_norms[k]);
    }).join(", ") + "</p>";
  }
  var seqs = e.sequences || [];
  h += "<p><b>Sequences</b> (" + (e.sequences_truncated || seqs.length) + "; sample identities to replay the batch)</p>";
  h += '<div class="seqs">' + table(["rank", "micro", "row", "dataset", "dataset sample", "sample index", "t", "mask ratio", "weight", "CE/token", "masked"],
    seqs.map(function (q) {
      return [q.rank, q.micro_batch, q.row, q.dataset_index === undefined ? "" : q.dataset_index, q.dataset_sample_index === undefined ? "" : q.dataset_sample_index,
              q.sample_index, fmt(q.t), fmt(q.mask_ratio), fmt(q.weight),
              q.masked_tokens ? fmt(q.unweighted_sum / q.masked_tokens) : "n/a", fmt(q.masked_tokens)].map(String);
    })) + "</div>";
  if (e.replay && e.replay.length) h += "<p><b>Replay</b> <code>" + esc(JSON.stringify(e.replay)) + "</code></p>";
  el.innerHTML = h;
  if (scroll && !PNG_MODE && el.scrollIntoView) el.scrollIntoView({behavior: "smooth", block: "start"});
}

function summary() {
  var t = RUN.train, n = t.steps.length, last = function (k) { var c = col(t, k); return c ? c[n - 1] : null; };
  var m = RUN.meta, parts = [];
  if (n) {
    parts.push("last step <b>" + t.steps[n - 1] + "</b>", "loss <b>" + fmt(last("train/loss")) + "</b> (EMA " + fmt(last("train/loss_ema")) + ")",
               "CE <b>" + fmt(last("train/ce")) + "</b>", "tokens/s <b>" + fmt(last("perf/tokens_per_s")) + "</b>",
               "spikes <b>" + fmt(last("spikes/total")) + "</b> (skipped updates " + fmt(last("spikes/skipped_total")) + ")");
  } else parts.push("no training records yet");
  if (m.scheduler) parts.push("scheduler " + esc(m.scheduler));
  if (m.world_size) parts.push("world size " + m.world_size);
  parts.push(esc(m.conventions || "t=0 all masked, t=1 clean; mask ratio r = 1 - kappa(t)"));
  document.getElementById("summary").innerHTML = parts.join(" \u00b7 ") + "<br><small>" + esc(RUN.run_dir) + " \u00b7 generated " + esc(RUN.generated) + "</small>";
  document.getElementById("notes").innerHTML = (RUN.notes || []).map(function (x) { return "<div>" + esc(x) + "</div>"; }).join("");
}

function render() {
  var T = RUN.train, steps = T.steps, marks = spikeMarkers();
  summary();
  var lossSeries = [
    {name: "loss (weighted, the objective)", color: "#222", xs: steps, ys: col(T, "train/loss") || [], width: 1.2},
    {name: "loss EMA", color: "#ff7f0e", xs: steps, ys: col(T, "train/loss_ema") || [], width: 2},
    {name: "unweighted CE per masked token", color: "#1f77b4", xs: steps, ys: col(T, "train/ce") || [], width: 1.2},
    {name: "CE EMA", color: "#17becf", xs: steps, ys: col(T, "train/ce_ema") || [], width: 2}];
  if (RUN.val.steps.length) {
    lossSeries.push({name: "validation loss", color: "#2ca02c", xs: RUN.val.steps, ys: col(RUN.val, "val/loss") || [], dash: "5 3", points: true});
    lossSeries.push({name: "validation CE", color: "#9467bd", xs: RUN.val.steps, ys: col(RUN.val, "val/ce") || [], dash: "5 3", points: true});
  }
  lineChart("chart-loss", {title: "Training loss and unweighted CE (markers: spikes; click one)", series: lossSeries, markers: marks, legendCols: 2});
  lineChart("chart-bucket-loss", {title: "w\u00b7CE per masked token, per bucket (log scale)", series: bucketSeries(T, "loss"), ylog: true, markers: marks,
                                  yLabel: "weighted CE"});
  lineChart("chart-bucket-ce", {title: "Unweighted CE per masked token, per bucket", series: bucketSeries(T, "ce"), markers: marks, yLabel: "CE (nats)"});
  var sel = document.getElementById("heatmap-mode");
  heatmap("chart-heatmap", sel.value);
  sel.addEventListener("change", function () { heatmap("chart-heatmap", sel.value); });
  var groups = (RUN.meta.grad_groups || ["embeddings", "backbone", "head", "time_conditioning"]);
  var gs = [{name: "total (before clipping)", color: "#222", xs: steps, ys: col(T, "grad/total") || [], width: 2},
            {name: "total (after clipping)", color: "#222", xs: steps, ys: col(T, "grad/total_post_clip") || [], dash: "5 3"},
            {name: "max total in window", color: "#aaa", xs: steps, ys: col(T, "grad/total_max") || [], width: 1}];
  groups.forEach(function (g, i) {
    gs.push({name: g, color: PALETTE[i % PALETTE.length], xs: steps, ys: col(T, "grad/" + g) || []});
    gs.push({name: g + " (after clipping)", color: PALETTE[i % PALETTE.length], xs: steps, ys: col(T, "grad/" + g + "_post_clip") || [], dash: "4 3", width: 1});
  });
  var clip = RUN.meta.grad_clip || (col(T, "grad/clip") || []).filter(ok)[0];
  lineChart("chart-grad", {title: "Gradient L2 norm by parameter group (log scale)", series: gs, ylog: true, markers: marks,
                           hlines: clip ? [{y: clip, label: "clip threshold " + fmt(clip)}] : []});
  lineChart("chart-lr", {title: "Learning rate", series: [{name: "lr", color: "#2ca02c", xs: steps, ys: col(T, "opt/lr") || [], width: 2}],
                         width: 460, height: 200, legendCols: 1, zero: true});
  lineChart("chart-tps", {title: "Tokens per second", series: [{name: "tokens/s", color: "#8c564b", xs: steps, ys: col(T, "perf/tokens_per_s") || [], width: 2},
                                                               {name: "MFU", color: "#e377c2", xs: steps, ys: col(T, "perf/mfu") || []}],
                          width: 460, height: 200, legendCols: 2, zero: true});
  lineChart("chart-weighting", {title: "Share of the across-sequence spread of w\u00b7CE explained by the weights alone (1 = all of it)",
    series: [{name: "weighting variance explained", color: "#1f77b4", xs: steps, ys: col(T, "train/weighting_var_explained") || [], width: 2}],
    markers: marks, height: 160, legendCols: 1});
  if (RUN.val.steps.length) {
    lineChart("chart-val", {title: "Validation unweighted CE at each bucket's mid mask ratio", series: bucketSeries(RUN.val, "ce"), yLabel: "CE (nats)"});
  } else document.getElementById("val-section").style.display = "none";
  document.getElementById("spike-table").innerHTML = RUN.spikes.length ? table(
    ["step", "label", "action", "loss", "expected", "CE", "buckets"],
    RUN.spikes.map(function (e) {
      return [String(e.step), '<span class="label-' + esc(e.label) + '">' + esc(e.label) + "</span>", esc(e.action) + (e.skipped ? " (skipped)" : ""),
              fmt(e.loss), rangeText(e.loss_expected), fmt(e.ce), (e.buckets || []).map(function (b) { return esc(b.label); }).join("; ")];
    }), function (i) { return ' class="clickable" data-spike="' + i + '"'; }) : '<div class="empty">no spikes detected</div>';
  document.querySelectorAll("#spike-table tr.clickable").forEach(function (tr) {
    tr.addEventListener("click", function () { showSpike(+tr.getAttribute("data-spike"), true); });
  });
  if (RUN.spikes.length) showSpike(0, false);
  document.getElementById("bucket-table").innerHTML = table(["", "bucket", "mask ratio r", "t", "last w\u00b7CE", "last CE", "last mean weight"],
    BUCKETS.map(function (b, i) {
      var c = function (m) { var x = col(T, "train/" + b.name + "/" + m); return x ? fmt(x[x.length - 1]) : "n/a"; };
      return ['<span class="swatch" style="background:' + bucketColor(i, BUCKETS.length) + '"></span>', esc(b.name), rangeText(b.mask_ratio), rangeText(b.t),
              c("loss"), c("ce"), c("mean_weight")];
    }));
  evaluationPanel();
  responsePanel();
}

// Evaluation panel (kind "eval" records): one small chart per eval/<task>/<metric>, its _stderr sibling as
// error bars, the latest value as text, and a table of the latest values with each task's NFE and tokens/s.
var EVAL_TEXT_ONLY = {nfe: "NFE", nfe_block: "block NFE", tokens_per_s: "tokens/s"};  // generation cost, not a score: text only, no chart
var EVAL_CHARTS = 0;

function isStderrKey(E, key) { return /_stderr$/.test(key) && (key.slice(0, -7) in E.cols); }
function lastIndex(ys) { for (var i = ys.length - 1; i >= 0; i--) if (ok(ys[i])) return i; return -1; }

// The task and metric names are not known in advance: they are read off the eval/<task>/<metric> keys.
function evalMetrics(E) {
  var out = [];
  Object.keys(E.cols || {}).sort().forEach(function (key) {
    var m = /^eval\/([^\/]+)\/(.+)$/.exec(key);
    if (!m || EVAL_TEXT_ONLY[m[2]] || isStderrKey(E, key)) return;
    var ys = E.cols[key], err = E.cols[key + "_stderr"] || null;
    // Scores (exact match, parses, pass@k) carry a stderr and are fractions; likelihood numbers
    // (NELBO per token, perplexity bound) carry none and are plain numbers.
    var fraction = err !== null && ys.every(function (v) { return !ok(v) || (v >= 0 && v <= 1); });
    out.push({task: m[1], metric: m[2], ys: ys, err: err, fraction: fraction, last: lastIndex(ys)});
  });
  return out;
}

// "3.0 ± 2.0 %" for a fraction, "5.1" or "5.1 ± 0.2" otherwise; i is a record index of the eval table.
function evalValueText(m, i) {
  if (i < 0 || !ok(m.ys[i])) return "n/a";
  var v = m.ys[i], e = m.err ? m.err[i] : null;
  if (m.fraction) return (100 * v).toFixed(1) + (ok(e) ? " \u00b1 " + (100 * e).toFixed(1) : "") + " %";
  return fmt(v) + (ok(e) ? " \u00b1 " + fmt(e) : "");
}
function evalTaskText(E, task, name, i) { var c = col(E, "eval/" + task + "/" + name); return i >= 0 && c ? fmt(c[i]) : "n/a"; }

// tools/loss_dashboard.py --png collects ids matching png-[a-z_]+: other characters become "_".
function evalPngName(m, used) {
  var name = "eval_" + (m.task + "_" + m.metric).toLowerCase().replace(/[^a-z_]/g, "_");
  while (used[name]) name += "_";
  used[name] = true;
  return name;
}

// A fraction is charted in percent, its interval clipped to [0, 100] (a score cannot leave it).
function evalSeries(E, m, color) {
  var scale = m.fraction ? 100 : 1, lo = [], hi = [];
  m.ys.forEach(function (v, i) {
    var e = m.err ? m.err[i] : null, a = ok(v) && ok(e) ? v - e : null, b = ok(v) && ok(e) ? v + e : null;
    if (m.fraction && a !== null) { a = Math.max(0, a); b = Math.min(1, b); }
    lo.push(a === null ? null : a * scale); hi.push(b === null ? null : b * scale);
  });
  return {name: m.metric + (m.err ? " (bars: \u00b1 stderr)" : ""), color: color, xs: E.steps, points: true, width: 1.5,
          ys: m.ys.map(function (v) { return ok(v) ? v * scale : null; }), lo: m.err ? lo : null, hi: m.err ? hi : null};
}

function evalTable(E, metrics) {
  return table(["task", "metric", "latest", "step", "NFE", "tokens/s"], metrics.map(function (m) {
    return [esc(m.task), esc(m.metric), evalValueText(m, m.last), m.last >= 0 ? String(E.steps[m.last]) : "n/a",
            evalTaskText(E, m.task, "nfe", m.last), evalTaskText(E, m.task, "tokens_per_s", m.last)];
  }));
}

function evalCharts(E, metrics) {
  var charted = metrics.filter(function (m) { return m.last >= 0; }), used = {}, tasks = [];
  metrics.forEach(function (m) { if (tasks.indexOf(m.task) < 0) tasks.push(m.task); });
  document.getElementById("eval-charts").innerHTML = charted.map(function (m, j) {
    return '<div class="eval-item"><div class="eval-latest"><b>' + esc(m.task) + " " + esc(m.metric) + " " + evalValueText(m, m.last) +
           "</b> <small>(step " + E.steps[m.last] + ")</small></div>" +
           '<div id="chart-eval-' + j + '" class="chart" data-png="' + evalPngName(m, used) + '"></div></div>';
  }).join("");
  charted.forEach(function (m, j) {
    var color = PALETTE[tasks.indexOf(m.task) % PALETTE.length];
    var drawn = lineChart("chart-eval-" + j, {title: m.task + " " + m.metric + (m.fraction ? " (%)" : ""), series: [evalSeries(E, m, color)],
                                              width: 460, height: 160, legendCols: 1, zero: m.fraction, yLabel: m.fraction ? "%" : "",
                                              yClamp: m.fraction ? [0, 100] : null});
    if (drawn) EVAL_CHARTS += 1;
  });
}

function evaluationPanel() {
  var E = RUN.eval || {steps: [], cols: {}}, latest = document.getElementById("eval-latest");
  if (!E.steps.length) { latest.innerHTML = '<div class="empty">no evaluation records: set eval.interval</div>'; return; }
  var metrics = evalMetrics(E);
  if (!metrics.length) { latest.innerHTML = '<div class="empty">evaluation records hold no eval/&lt;task&gt;/&lt;metric&gt; scores</div>'; return; }
  latest.innerHTML = evalTable(E, metrics);
  evalCharts(E, metrics);
}

function exportPngs(done) {
  var boxes = Array.prototype.slice.call(document.querySelectorAll("[data-png]")), pending = boxes.length;
  function finish() { if (--pending === 0) done(); }
  if (!pending) return done();
  boxes.forEach(function (box) {
    var svg = box.querySelector("svg");
    if (!svg) return finish();
    var w = +svg.getAttribute("width"), h = +svg.getAttribute("height"), img = new Image();
    img.onload = function () {
      var cv = document.createElement("canvas"); cv.width = w; cv.height = h;
      var ctx = cv.getContext("2d"); ctx.fillStyle = "#ffffff"; ctx.fillRect(0, 0, w, h); ctx.drawImage(img, 0, 0);
      var pre = document.createElement("pre"); pre.className = "png-out"; pre.id = "png-" + box.getAttribute("data-png");
      pre.textContent = cv.toDataURL("image/png"); document.body.appendChild(pre); finish();
    };
    img.onerror = function () { ERRORS.push("could not rasterize chart " + box.getAttribute("data-png")); markErrors(); finish(); };
    img.src = "data:image/svg+xml;base64," + btoa(unescape(encodeURIComponent(new XMLSerializer().serializeToString(svg))));
  });
}

try { render(); } catch (err) { ERRORS.push(String(err && err.stack || err)); }
if (ERRORS.length) markErrors();
else {
  var okText = "RENDER_OK charts=" + CHARTS + " spikes=" + RUN.spikes.length + " steps=" + RUN.train.steps.length + " eval_charts=" + EVAL_CHARTS + " response_charts=" + RESPONSE_CHARTS;
  if (PNG_MODE) exportPngs(function () { if (!ERRORS.length) document.getElementById("selfcheck").textContent = okText + " png=done"; });
  else { document.getElementById("selfcheck").textContent = okText; document.body.setAttribute("data-render", "ok"); }
}
