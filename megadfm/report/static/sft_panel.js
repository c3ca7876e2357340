// SFT panel: the response-length distribution of the training batches (train/response_tokens/* keys,
// megadfm/training/telemetry/response_lengths.py). Put before dashboard.js in one script, so these variables
// are set when its last lines call render(); a pre-training run has none of the keys and the section says so.
var RESPONSE_CHARTS = 0;
var RESPONSE_PREFIX = "train/response_tokens/";

function responseHistogram(T) {
  var bins = (RUN.meta.response_length_bins || []).slice();
  Object.keys(T.cols || {}).forEach(function (k) {  // a run_meta.json without the bin list: read the bins off the keys
    var label = k.indexOf(RESPONSE_PREFIX + "hist/") === 0 ? k.slice((RESPONSE_PREFIX + "hist/").length) : null;
    if (label !== null && bins.indexOf(label) < 0) bins.push(label);
  });
  return bins.map(function (label) {
    var c = col(T, RESPONSE_PREFIX + "hist/" + label) || [];
    return {label: label, count: c.reduce(function (a, v) { return a + (ok(v) ? v : 0); }, 0)};
  });
}

// A bar per bin: examples of the whole run (every logging window summed) by response tokens.
function barChart(id, title, bars) {
  var el = document.getElementById(id), W = 460, M = {l: 56, r: 12, t: 30, b: 70}, PH = 180, H = M.t + PH + M.b;
  var top = Math.max.apply(null, bars.map(function (b) { return b.count; }).concat([1]));
  var bw = (W - M.l - M.r) / Math.max(bars.length, 1);
  var s = '<svg width="' + W + '" height="' + H + '" viewBox="0 0 ' + W + " " + H + '" font-family="sans-serif" font-size="11">';
  s += '<rect x="0" y="0" width="' + W + '" height="' + H + '" fill="#ffffff"/>';
  s += '<text x="' + M.l + '" y="18" font-size="13" font-weight="bold" fill="#222">' + esc(title) + "</text>";
  niceTicks(0, top, 5).forEach(function (v) {
    var y = (M.t + PH - v / top * PH).toFixed(1);
    s += '<line x1="' + M.l + '" x2="' + (W - M.r) + '" y1="' + y + '" y2="' + y + '" stroke="#ececec"/>';
    s += '<text x="' + (M.l - 6) + '" y="' + y + '" dy="4" text-anchor="end" fill="#555">' + fmt(v) + "</text>";
  });
  bars.forEach(function (b, i) {
    var h = b.count / top * PH, x = M.l + i * bw;
    s += '<rect class="bar" x="' + (x + 2).toFixed(1) + '" y="' + (M.t + PH - h).toFixed(1) + '" width="' + Math.max(bw - 4, 1).toFixed(1) +
         '" height="' + h.toFixed(1) + '" fill="#1f77b4"><title>' + esc(b.label) + " tokens: " + fmt(b.count) + " examples</title></rect>";
    s += '<text x="' + (x + bw / 2).toFixed(1) + '" y="' + (M.t + PH + 14) + '" text-anchor="end" fill="#555" transform="rotate(-35 ' +
         (x + bw / 2).toFixed(1) + " " + (M.t + PH + 14) + ')">' + esc(b.label) + "</text>";
  });
  s += '<text x="' + (W / 2) + '" y="' + (H - 4) + '" text-anchor="middle" fill="#555">response tokens per example</text></svg>';
  el.innerHTML = s;
  return true;
}

function responsePanel() {
  var T = RUN.train, summaryBox = document.getElementById("response-summary");
  var examples = col(T, RESPONSE_PREFIX + "examples");
  if (!examples || !examples.some(ok)) {
    summaryBox.innerHTML = '<div class="empty">no SFT batches in this run (data.format: sft records the response lengths)</div>';
    return;
  }
  var bars = responseHistogram(T), total = bars.reduce(function (a, b) { return a + b.count; }, 0);
  var mean = col(T, RESPONSE_PREFIX + "mean") || [], std = col(T, RESPONSE_PREFIX + "std") || [];
  var lo = mean.map(function (m, i) { return ok(m) && ok(std[i]) ? Math.max(0, m - std[i]) : null; });
  var hi = mean.map(function (m, i) { return ok(m) && ok(std[i]) ? m + std[i] : null; });
  var i = lastIndex(mean);
  summaryBox.innerHTML = "examples seen <b>" + fmt(total) + "</b> \u00b7 latest window: mean <b>" + fmt(mean[i]) + "</b> \u00b1 " +
                         fmt(std[i]) + " response tokens (std), " + fmt(examples[i]) + " examples";
  if (lineChart("chart-response-mean", {title: "Mean response tokens per example (bars: \u00b1 std)", width: 460, height: 180, legendCols: 1,
                                        zero: true, series: [{name: "mean response tokens", color: "#2ca02c", xs: T.steps, ys: mean,
                                                              lo: lo, hi: hi, width: 2}]})) RESPONSE_CHARTS += 1;
  if (barChart("chart-response-hist", "Examples by response length (whole run)", bars)) RESPONSE_CHARTS += 1;
}
