// {% raw %} The neuron browser of report.html, included by report.html.j2 in a script element.
// It builds #browser from the JSON in #browser-data (neurons.json, schema version 1) with
// createElement and text nodes only: no text of the run is ever parsed as HTML.
(() => {
  "use strict";
  const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777"];
  const DESC_FIRST = new Set(["r", "abs_r", "verification"]);  // sorted descending on first click
  const FILTERS = ["filter-metric", "filter-layer", "filter-sign", "filter-significance"];
  const NO_PANEL = "No token-level activations kept for this neuron " +
      "(the top find.report_neurons of each metric are kept).";
  const state = {data: null, rows: [], sortKey: null, sortDir: 1};

  // --- DOM and formatting helpers -----------------------------------------------------------
  // el("td", {class: "num"}, ["text", node]): attributes by setAttribute, strings as text nodes.
  function el(tag, attrs = {}, children = [], ns = null) {
    const node = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    for (const c of children) node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    return node;
  }
  const svg = (tag, attrs, children) => el(tag, attrs, children, "http://www.w3.org/2000/svg");
  const $ = (id) => document.getElementById(id);
  const simpleTable = (header, body) => el("table", {}, [
    el("tr", {}, header.map((h) => el("th", {}, [h]))),
    ...body.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, [c]))))]);

  const isNum = (x) => typeof x === "number" && isFinite(x);
  const fmtR = (r) => (isNum(r) ? r.toFixed(3) : "n/a");
  const fmt6 = (a) => (isNum(a) ? a.toFixed(6) : "n/a");
  const fmtP = (p) => (!isNum(p) ? "n/a" : p === 0 ? "0" : p.toExponential(1));
  const fmtBool = (b) => (b === true ? "yes" : b === false ? "no" : "n/a");
  const fmtValue = (v) => (isNum(v) ? String(+v.toFixed(3)) : "n/a");
  const fmtDrop = (v) => (v >= 0 ? "+" : "") + v.toFixed(3);

  // The verification row of the largest drop, or null.
  function bestVerification(row) {
    let best = null;
    for (const v of row.verification || []) if (isNum(v.drop) && (!best || v.drop > best.drop)) best = v;
    return best;
  }
  const describe = (v) => `${v.selection}, ${v.mode}, k=${v.k}: drop ${fmtDrop(v.drop)} vs random ` +
      `${isNum(v.random_drop) ? fmtDrop(v.random_drop) : "n/a"}, p=${fmtValue(v.p)}` +
      (v.verdict ? `; ${v.verdict}` : "");

  // --- the table ----------------------------------------------------------------------------
  function sortValue(row, key) {
    if (key === "abs_r") return isNum(row.r) ? Math.abs(row.r) : -Infinity;
    if (key === "p") return isNum(row.p) ? row.p : Infinity;
    if (key === "verification") return (bestVerification(row) || {drop: -Infinity}).drop;
    return typeof row[key] === "string" || isNum(row[key]) ? row[key] : -Infinity;
  }

  function passes(row) {
    const [metric, layer, sign, sig] = FILTERS.map((id) => $(id).value);
    return (!metric || row.metric === metric) && (!layer || String(row.layer) === layer) &&
        (!sign || (sign === "+" ? row.r > 0 : row.r < 0)) && (!sig || row[sig] === true);
  }

  // The row's cells, in the order of the table's th.
  function rowCells(row) {
    const v = bestVerification(row), num = {class: "num"};
    return [[row.metric], [String(row.rank), num], [String(row.layer), num], [row.position],
            [String(row.neuron), num], [fmtR(row.r), num], [fmtR(row.r).replace("-", ""), num],
            [fmtP(row.p), num], [v ? `${v.selection}/${v.mode} ${fmtDrop(v.drop)}` : "",
                                 v ? {title: describe(v)} : {}],
            [fmtBool(row.fdr)], [fmtBool(row.fwer)]].map(([text, attrs]) => el("td", attrs, [text]));
  }

  function renderTable() {
    const {rows, sortKey, sortDir} = state, shown = rows.filter(passes);
    if (sortKey) {
      shown.sort((a, b) => {
        const x = sortValue(a, sortKey), y = sortValue(b, sortKey);
        return (x < y ? -sortDir : x > y ? sortDir : 0) || a.index - b.index;
      });
    }
    const open = $("neuron-panel").getAttribute("data-id"), tbody = el("tbody");
    for (const row of shown) {
      const tr = el("tr", {class: "neuron-row" + (row.id === open ? " selected" : ""), "data-id": row.id,
                           "data-metric": row.metric, "data-layer": row.layer}, rowCells(row));
      tr.addEventListener("click", () => showNeuron(row.id, true));
      tbody.appendChild(tr);
    }
    $("neuron-table").replaceChild(tbody, $("neuron-table").tBodies[0]);
    $("neuron-count").textContent = `${shown.length} of ${rows.length} neurons`;
  }

  function sortBy(th) {
    const key = th.getAttribute("data-key");
    state.sortDir = key === state.sortKey ? -state.sortDir : DESC_FIRST.has(key) ? -1 : 1;
    state.sortKey = key;
    for (const h of th.parentNode.children) h.classList.remove("sorted-asc", "sorted-desc");
    th.classList.add(state.sortDir > 0 ? "sorted-asc" : "sorted-desc");
    renderTable();
  }

  function buildFilters() {
    const {data, rows} = state;
    for (const m of data.metrics) $("filter-metric").appendChild(el("option", {value: m}, [m]));
    const layers = new Set([...data.layers, ...rows].map((x) => x.layer));
    for (const l of [...layers].sort((a, b) => a - b)) {
      $("filter-layer").appendChild(el("option", {value: l}, [String(l)]));
    }
    for (const id of FILTERS) $(id).addEventListener("change", renderTable);
    for (const th of document.querySelectorAll("#neuron-table th[data-key]")) {
      th.addEventListener("click", () => sortBy(th));
    }
  }

  // Per layer and metric: how many neurons are above the |r| threshold, how many FDR-significant.
  function buildLayers() {
    const {data} = state, table = $("layer-table");
    const top = el("tr", {}, [el("th", {rowspan: 2}, ["layer"])]), sub = el("tr");
    for (const m of data.metrics) {
      top.appendChild(el("th", {colspan: 2}, [m]));
      sub.append(el("th", {}, [`|r| > ${data.threshold}`]), el("th", {}, ["FDR"]));
    }
    table.tHead.append(top, sub);
    for (const l of data.layers) {
      const above = l.above_threshold || {}, fdr = l.significant_fdr || {};
      const cells = [String(l.layer), ...data.metrics.flatMap((m) => [above[m], fdr[m]]).map(fmtValue)];
      table.tBodies[0].appendChild(el("tr", {id: `layer-${l.layer}`}, cells.map((c) => el("td", {}, [c]))));
    }
  }

  // --- the panel ----------------------------------------------------------------------------
  // One density entry as an inline SVG: a polyline per group, the grid's ends, a legend.
  function densitySvg(d) {
    const grid = d.grid, lo = grid[0], hi = grid[grid.length - 1], H = 110, pad = 6;
    const W = Math.min(520, Math.max(280, 40 + 5.6 * Math.max(...d.groups.map((g) => g.label.length + 9))));
    const ymax = Math.max(1e-12, ...d.groups.flatMap((g) => g.density.filter(isNum)));
    const x = (v) => pad + ((v - lo) / (hi - lo || 1)) * (W - 2 * pad);
    const y = (v) => H - 14 - ((isNum(v) ? v : 0) / ymax) * (H - 28);
    const node = svg("svg", {width: W, height: H + 14 * d.groups.length + 2, "data-metric": d.metric}, [
      svg("text", {x: pad, y: 11}, [`density by ${d.metric}`]),
      svg("line", {x1: pad, x2: W - pad, y1: H - 14, y2: H - 14, stroke: "#999"}),
      svg("text", {x: pad, y: H - 2}, [fmtValue(lo)]),
      svg("text", {x: W / 2, y: H - 2, "text-anchor": "middle"}, ["activation"]),
      svg("text", {x: W - pad, y: H - 2, "text-anchor": "end"}, [fmtValue(hi)])]);
    if (lo < 0 && hi > 0) {
      node.appendChild(svg("line", {x1: x(0), x2: x(0), y1: 14, y2: H - 14, stroke: "#bbb",
                                    "stroke-dasharray": "2,2"}));
    }
    d.groups.forEach((g, i) => {
      const colour = PALETTE[i % PALETTE.length], ly = H + 14 * i + 8;
      const points = grid.map((v, k) => `${x(v).toFixed(1)},${y(g.density[k]).toFixed(1)}`).join(" ");
      node.append(svg("polyline", {points, fill: "none", stroke: colour, "stroke-width": 1.5}),
                  svg("rect", {x: pad, y: ly - 4, width: 14, height: 3, fill: colour}),
                  svg("text", {x: pad + 20, y: ly}, [`${g.label} (n=${g.n})`]));
    });
    return node;
  }

  // One example: the site's activation, the metric values, the tokens coloured by activation.
  function exampleDiv(ex, panel) {
    const e = state.data.examples[String(ex.example)];
    if (!e) return el("div", {class: "example"}, [`example ${ex.example}: not in the data`]);
    const site = (e.sites || {})[panel.position], prompt = e.prompt || [], scale = panel.max_abs;
    const spans = e.tokens.map((t, i) => {
      const a = ex.tokens[i], alpha = isNum(a) && scale > 0 ? Math.min(1, Math.abs(a) / scale) : 0;
      const span = el("span", {class: "tok" + (i === site ? " site" : "") + (prompt[i] ? " prompt" : ""),
                               "data-act": String(a), title: String(a)},
                      [t.replace(/\r?\n/g, "\u21b5").replace(/\t/g, "\u21e5")]);
      span.style.backgroundColor = `rgba(${a < 0 ? "37,99,235" : "220,38,38"},${+alpha.toFixed(3)})`;
      return span;
    });
    const metrics = Object.entries(e.metrics || {}).map(([k, v]) => `${k}=${fmtValue(v)}`).join(" ");
    return el("div", {class: "example", "data-example": ex.example}, [
      el("div", {class: "meta"}, ["activation ", el("b", {}, [fmt6(ex.activation)]),
                                  ` at ${panel.position} \u00b7 example ${ex.example} \u00b7 ${metrics}`]),
      el("div", {class: "toks"}, spans)]);
  }

  // The panel's nodes: `own` are the neuron's table rows, `panel` its panel or null.
  function panelNodes(id, own, panel) {
    const {data} = state, n = own[0] || panel, nodes = [];
    nodes.push(el("h3", {}, [`Layer ${n.layer}, neuron ${n.neuron} at ${n.position}`]),
               el("p", {}, [el("a", {href: `#layer-${n.layer}`}, [`layer ${n.layer} counts`]),
                            ` \u00b7 ${id} \u00b7 examples of the ${data.split} split`]));
    // Its r with every metric (without a panel: the metrics that selected it), and its rank there.
    const rRows = data.metrics.map((m) => {
      const row = own.find((x) => x.metric === m), r = panel ? (panel.r || {})[m] : row && row.r;
      if (!row) return panel ? [m, fmtR(r), "", "", "", ""] : null;
      return [m, fmtR(r), String(row.rank), fmtP(row.p), fmtBool(row.fdr), fmtBool(row.fwer)];
    }).filter(Boolean);
    const stats = el("div", {class: "stats"}, [simpleTable(["metric", "r", "rank", "p", "FDR", "FWER"], rRows)]);
    for (const d of (panel && panel.density) || []) stats.appendChild(densitySvg(d));
    nodes.push(stats, el("h4", {}, ["Verification"]));
    const seen = new Map();  // each of its table rows may list the same verification rows
    for (const v of own.flatMap((row) => row.verification || [])) seen.set(`${v.selection}/${v.mode}/${v.k}`, v);
    nodes.push(seen.size ? el("ul", {}, [...seen.values()].map((v) => el("li", {}, [describe(v)])))
                         : el("p", {class: "none"}, ["not in a verified top-K set"]));
    if (!panel) return nodes.concat([el("p", {class: "none"}, [NO_PANEL])]);
    for (const [title, list] of [["Top examples", panel.top || []], ["Bottom examples", panel.bottom || []]]) {
      nodes.push(el("h4", {}, [title]), ...list.map((ex) => exampleDiv(ex, panel)));
    }
    return nodes;
  }

  function showNeuron(id, fromClick) {
    const div = $("neuron-panel"), own = state.rows.filter((x) => x.id === id);
    const panel = state.data.panels[id] || null, hash = "#neuron=" + encodeURIComponent(id);
    if (fromClick && location.hash !== hash) location.hash = hash;
    div.replaceChildren();
    div.hidden = false;
    if (!own.length && !panel) {
      div.removeAttribute("data-id");
      div.appendChild(el("p", {class: "none"}, [`No neuron ${id} in this report.`]));
      return;
    }
    div.setAttribute("data-id", id);
    div.append(...panelNodes(id, own, panel));
    const box = $("neuron-table").parentNode, rows = document.querySelectorAll("#neuron-table tr.neuron-row");
    for (const tr of rows) tr.classList.toggle("selected", tr.getAttribute("data-id") === id);
    const tr = [...rows].find((x) => x.getAttribute("data-id") === id);  // in sight in its box
    const top = tr ? tr.getBoundingClientRect().top - box.getBoundingClientRect().top : 0;
    if (top < 20 || top > box.clientHeight - 20) box.scrollTop += top - box.clientHeight / 3;
    if (div.getBoundingClientRect().top > window.innerHeight - 60) div.scrollIntoView({block: "start"});
  }

  function onHash() {
    const m = /^#neuron=(.+)$/.exec(location.hash);
    if (!m) return;  // e.g. #layer-3: the panel stays
    let id = m[1];
    try { id = decodeURIComponent(id); } catch (e) { /* not %-encoded: as it is */ }
    if (id !== $("neuron-panel").getAttribute("data-id")) showNeuron(id, false);
  }

  function init() {
    const data = state.data = JSON.parse($("browser-data").textContent);
    state.rows = data.neurons.map((row, index) => Object.assign({index}, row));
    const q = isNum(data.fdr_q) ? `; FDR at q = ${data.fdr_q}` : "; no p-values";
    $("browser").querySelector(".filters").before(el("p", {class: "browser-meta"}, [
      `Run ${data.run}: the top-K neurons of every metric on the ${data.split} split (|r| threshold ` +
      `${data.threshold}${q}). Click a column to sort it, a row to open its panel.`]));
    buildFilters();
    buildLayers();
    renderTable();
    window.addEventListener("hashchange", onHash);
    onHash();
    document.body.dataset.ready = "1";
    document.body.dataset.readyMs = String(Math.round(performance.now()));  // since navigation
  }

  try {
    init();
  } catch (err) {
    const where = $("browser") || document.body;
    where.prepend(el("p", {id: "browser-error"}, [`Neuron browser failed: ${(err && err.message) || err}`]));
    throw err;
  }
})();
// {% endraw %}
