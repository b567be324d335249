// Addin Studio widget view. It only draws what the Python side computed and sends intents back;
// parsing, validation, the config string, search results and update norms all live in Python.
// The intents' names and fields come from Python too (the `intents` trait, built from
// Studio.INTENTS), so this file spells none of them: `send.applyStrategy({ name, targets })` sends
// that intent with those fields. Each panel below builds its elements, sends its intents and redraws
// itself when its traits change; `render` puts the panels together.

const SVG_NS = "http://www.w3.org/2000/svg";

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") el.textContent = v;
    else if (v !== null && v !== undefined && v !== false) el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c) el.append(c);
  return el;
}

function s(tag, attrs = {}) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

// -- the protocol -----------------------------------------------------------------------------------
// One sender per intent of Python's table (name -> the fields it takes), named in camelCase:
// send.applyStrategy({ name, targets }). A sender the table lacks, or a field its intent does not
// take, throws here rather than reaching Python as an unknown request.
function senders(model) {
  const send = {};
  for (const [type, fields] of Object.entries(model.get("intents") || {})) {
    send[type.replace(/-(.)/g, (_, c) => c.toUpperCase())] = (msg = {}) => {
      const extra = Object.keys(msg).filter((k) => !fields.includes(k));
      if (extra.length) throw new Error(`intent ${type} takes ${fields.join(", ") || "no fields"}, not ${extra.join(", ")}`);
      model.send({ type, ...msg });
    };
  }
  return new Proxy(send, {
    get(target, key) {
      if (typeof key === "string" && !(key in target)) throw new Error(`no intent ${key} in Studio.INTENTS`);
      return target[key];
    },
  });
}

// redraw with `fn` whenever one of the traits `names` changes
function watch(model, names, fn) {
  for (const n of names) model.on(`change:${n}`, fn);
}

function fillSelect(sel, names, value) {
  const cur = [...sel.options].map((o) => o.value).join("\n");
  if (sel.options.length !== names.length || cur !== names.join("\n")) sel.replaceChildren(...names.map((n) => h("option", { value: n, text: n })));
  sel.value = value;
}

const heading = (text) => h("div", { class: "as-h", text });
const FOLD_AT = 8;  // a list (string lines, placements, update norms) longer than this starts folded
const row = (...children) => h("div", { class: "as-row" }, ...children);

// -- the live loss plot ------------------------------------------------------------------------
function drawPlot(svg, data) {
  const W = 380, H = 170, L = 44, R = 40, T = 10, B = 26;
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const loss = (data && data.loss) || [];
  const smooth = (data && data.smooth) || [];
  const val = (data && data.val) || [];
  // the x axis follows the steps done so far (a stopped or long run still fills the plot)
  const lastStep = loss.length ? loss[loss.length - 1][0] : 0;
  const runEnd = Math.max(0, ...((data && data.runs) || []).map((r) => (r.smooth.length ? r.smooth[r.smooth.length - 1][0] : 0)));
  const total = Math.max(lastStep, runEnd, 10);
  svg.dataset.points = String(loss.length);
  svg.append(s("rect", { x: L, y: T, width: W - L - R, height: H - T - B, class: "as-plot-frame" }));
  svg.dataset.runs = String(((data && data.runs) || []).length);
  if (!loss.length && !((data && data.runs) || []).length) {
    const t = s("text", { x: W / 2, y: H / 2, class: "as-plot-empty" });
    t.textContent = "loss per step appears here while training";
    svg.append(t);
    return;
  }
  const runs = (data && data.runs) || [];
  const ys = loss.map((p) => p[1]).concat(...runs.map((r) => r.smooth.map((p) => p[1])));
  let lo = Math.min(...ys), hi = Math.max(...ys);
  if (hi - lo < 1e-9) { hi += 0.5; lo -= 0.5; }
  const x = (step) => L + ((W - L - R) * step) / total;
  const y = (v) => T + (H - T - B) * (1 - (v - lo) / (hi - lo));
  const ya = (a) => T + (H - T - B) * (1 - a / 100);
  const label = (tx, ty, text, cls) => {
    const t = s("text", { x: tx, y: ty, class: cls });
    t.textContent = text;
    svg.append(t);
  };
  const line = (pts, f, cls) => {
    const p = s("polyline", { class: cls, points: pts.map((q) => `${x(q[0]).toFixed(1)},${f(q[1]).toFixed(1)}`).join(" ") });
    svg.append(p);
  };
  runs.forEach((r, i) => {
    if (!r.smooth.length) return;
    line(r.smooth, y, `as-plot-run as-run-c${i % 3}`);
    svg.lastChild.setAttribute("data-run-curve", String(r.n));
    const end = r.smooth[r.smooth.length - 1];
    const t = s("text", { x: x(end[0]) + 2, y: y(end[1]), class: `as-plot-tick as-run-t${i % 3}` });
    t.textContent = `run ${r.n}`;
    svg.append(t);
    for (const q of r.val || []) {  // that run's val Acc@1 per epoch: hollow dots in its colour
      svg.append(s("circle", { cx: x(q[0]), cy: ya(q[1]), r: 2.5, class: `as-plot-runval as-run-c${i % 3}`, "data-run-val": String(r.n) }));
    }
  });
  if (!loss.length) {
    label(L - 4, T + 9, hi.toPrecision(3), "as-plot-tick as-end");
    label(L - 4, H - B, lo.toPrecision(3), "as-plot-tick as-end");
    return;
  }
  line(loss, y, "as-plot-loss");
  line(smooth, y, "as-plot-smooth");
  if (val.length) {
    line(val, ya, "as-plot-val");
    for (const q of val) svg.append(s("circle", { cx: x(q[0]), cy: ya(q[1]), r: 3, class: "as-plot-valdot" }));
  }
  label(L - 4, T + 9, hi.toPrecision(3), "as-plot-tick as-end");
  label(L - 4, H - B, lo.toPrecision(3), "as-plot-tick as-end");
  label(L, H - 8, "step 0", "as-plot-tick");
  label(W - R, H - 8, `${lastStep}${data.total ? ` / ${data.total}` : ""}`, "as-plot-tick as-end");
  label(W - R + 4, T + 9, "100%", "as-plot-tick as-val");
  label(W - R + 4, H - B, "0%", "as-plot-tick as-val");
  // the last step's loss, as the status line and the run item show it (the dark line is smoothed)
  const last = loss[loss.length - 1][1];
  svg.dataset.loss = last.toFixed(4);
  label(L + 6, T + 14, `last step: loss ${last.toFixed(4)}` + (val.length ? ` · val acc ${val[val.length - 1][1].toFixed(1)}%` : ""), "as-plot-legend");
}

// a config string drawn as unbreakable tokens (`(layer2[1].conv2){in1}->`, `r=4, `) with a break
// opportunity after each: a long line wraps at `->` or `, `, never inside a name; textContent stays the string
const TOKEN_END = /(?<=->)|(?<=, )|(?<=\): )/;
function drawTokens(el, text) {
  const nodes = [];
  text.split("\n").forEach((line, i) => {
    if (i) nodes.push(document.createTextNode("\n"));
    for (const tok of line.split(TOKEN_END)) {
      if (!tok) continue;
      nodes.push(h("span", { class: "as-tok", text: tok }), h("wbr"));
    }
  });
  el.replaceChildren(...nodes);
  return el;
}
const tokens = (tag, attrs, text) => drawTokens(h(tag, attrs), text);

// a long list shown collapsed: a summary with its count that opens it (the open state survives redraws)
function foldable(role, open) {
  const box = h("details", { class: "as-fold", "data-role": role });
  const summary = h("summary", { class: "as-fold-summary" });
  box.append(summary);
  box.open = open;
  return { box, summary };
}

// blue (little change) -> orange (most change) for the update-norm colouring
function gradColor(t) {
  const a = [70, 130, 200], b = [230, 90, 20];
  const c = a.map((v, i) => Math.round(v + (b[i] - v) * Math.max(0, Math.min(1, t))));
  return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
}

// -- header: title, parameter counts, notice ---------------------------------------------------------
function headerPanel({ model }) {
  const title = h("span", { class: "as-title" });
  const params = h("span", { class: "as-params", "data-role": "params" });
  const notice = h("div", { class: "as-notice", "data-role": "notice" });
  const drawParams = () => { params.textContent = model.get("params"); };
  const drawNotice = () => { notice.textContent = model.get("notice"); notice.classList.toggle("as-hidden", !model.get("notice")); };
  watch(model, ["params"], drawParams);
  watch(model, ["notice"], drawNotice);
  return {
    nodes: [h("div", { class: "as-header" }, title, params), notice],
    draw() { title.textContent = model.get("title"); drawParams(); drawNotice(); },
  };
}

// labels, states, the started point and across arrows on whatever view the canvas shows
function decorateCanvas(canvas, model) {
  const labels = model.get("labels") || {};
  const states = model.get("states") || {};
  const pend = model.get("pending");
  const sel = (model.get("selected") || {}).path;
  const preview = (model.get("preview") || {}).labels || {};
  const grads = model.get("grads") || {};
  const gv = Object.values(grads).filter((v) => v > 0);
  const glo = gv.length ? Math.log(Math.min(...gv)) : 0, ghi = gv.length ? Math.log(Math.max(...gv)) : 0;
  for (const p of canvas.querySelectorAll("[data-point]")) {
    const lab = labels[p.dataset.point];
    if (lab) p.setAttribute("data-placement", lab); else p.removeAttribute("data-placement");
    p.classList.toggle("as-pending", p.dataset.point === pend);
    p.classList.toggle("as-preview", !!preview[p.dataset.point]);
    const g = grads[p.dataset.point];
    if (lab && g !== undefined) {
      p.setAttribute("data-grad", String(g));
      const t = g > 0 && ghi > glo ? (Math.log(g) - glo) / (ghi - glo) : (g > 0 ? 1 : 0);
      p.style.fill = gradColor(t);
      p.style.background = gradColor(t);
    } else if (p.hasAttribute("data-grad")) {
      p.removeAttribute("data-grad"); p.style.fill = ""; p.style.background = "";
    }
  }
  const matches = new Set(model.get("matches") || []);
  for (const n of canvas.querySelectorAll("[data-path]")) {
    const st = states[n.dataset.path];
    n.classList.toggle("as-s-trainable", st === "trainable");
    n.classList.toggle("as-s-frozen", st === "frozen");
    n.classList.toggle("as-s-partial", st === "partial");
    n.classList.toggle("as-selected", n.dataset.path === sel);
    if (matches.has(n.dataset.path)) n.setAttribute("data-match", "true"); else n.removeAttribute("data-match");
    const own = [...n.children].some((c) => c.hasAttribute && c.hasAttribute("data-placement"));
    n.classList.toggle("as-has-addin", own);
  }
  const overlay = canvas.querySelector(".as-overlay");
  if (overlay) drawOverlay(canvas, model, overlay);
}

// placement labels and across arrows, drawn over the graph
function drawOverlay(canvas, model, overlay) {
  overlay.replaceChildren();
  for (const p of canvas.querySelectorAll("circle[data-placement]")) {
    const t = s("text", { x: +p.getAttribute("cx") + 8, y: +p.getAttribute("cy") + 4, class: "as-plabel" });
    t.textContent = p.getAttribute("data-placement");
    overlay.append(t);
  }
  for (const [a, b] of model.get("links") || []) {
    const pa = canvas.querySelector(`circle[data-point="${CSS.escape(a)}"]`);
    const pb = canvas.querySelector(`circle[data-point="${CSS.escape(b)}"]`);
    if (!pa || !pb) continue;
    const ax = +pa.getAttribute("cx"), ay = +pa.getAttribute("cy");
    const bx = +pb.getAttribute("cx"), by = +pb.getAttribute("cy");
    const bend = Math.max(ax, bx) + 40 + Math.abs(by - ay) * 0.08;
    overlay.append(s("path", { class: "as-link", d: `M${ax},${ay} C${bend},${ay} ${bend},${by} ${bx},${by}`, "marker-end": "url(#as-arrow)" }));
  }
}

// the print(model) view: one row per printed line, with its points before and after
function printoutView(lines) {
  const frag = document.createDocumentFragment();
  for (const line of lines) {
    const row = h("div", { class: "as-line" });
    const pt = line.point || line.path;
    const clickable = pt !== undefined && pt !== null && pt !== "";
    if (clickable && line.head) {
      row.append(h("span", { class: "as-tpoint", "data-point": `${pt}:pre`, "data-group": line.group || null, title: `before ${pt}` }));
    } else row.append(h("span", { class: "as-tgap" }));
    const text = h("span", { class: "as-ltext", text: line.text });
    if (line.head && line.path) {
      text.setAttribute("data-path", line.path);
      if (line.range) text.setAttribute("data-range", line.range);
    }
    row.append(text);
    if (clickable && line.tail) {
      row.append(h("span", { class: "as-tpoint", "data-point": `${pt}:post`, "data-group": line.group || null, title: `after ${pt}` }));
    }
    frag.append(row);
  }
  const box = h("div", { class: "as-printout", "data-role": "printout" });
  box.append(frag);
  return box;
}

// -- the graph canvas: the module graph or the print(model) text, with the placements drawn in -------
function graphCanvas(ctx) {
  const { model, send, root } = ctx;
  let view = "graph";
  let zoom = 1;
  const canvas = h("div", { class: "as-canvas", "data-role": "canvas" });
  const decorate = () => decorateCanvas(canvas, model);

  function applyZoom() {
    const svg = canvas.querySelector("svg.as-graph");
    if (!svg) return;
    const w = +svg.getAttribute("viewBox").split(" ")[2];
    const hh = +svg.getAttribute("viewBox").split(" ")[3];
    svg.style.width = `${w * zoom}px`;
    svg.style.height = `${hh * zoom}px`;
  }

  function drawGraph() {
    const start = performance.now();
    canvas.innerHTML = model.get("svg");
    applyZoom();
    decorate();
    root.dataset.renderMs = (performance.now() - start).toFixed(1);
  }

  function drawText() {
    canvas.replaceChildren(printoutView(model.get("lines") || []));
    decorate();
  }

  function drawView() {
    if (view === "graph") drawGraph(); else drawText();
  }

  function revealMatch() {
    const r = model.get("reveal");
    if (!r) return;
    const el = canvas.querySelector(`[data-path="${CSS.escape(r)}"]`);
    if (el) el.scrollIntoView({ block: "center", inline: "center" });
  }

  canvas.addEventListener("click", (e) => {
    const pt = e.target.closest("[data-point]");
    if (pt) {
      ctx.clickedAt = performance.now();
      send.point({ point: pt.dataset.point, group: pt.dataset.group || null });
      root.focus({ preventScroll: true });
      return;
    }
    const tg = e.target.closest("[data-toggle]");
    if (tg) { send.toggle({ path: tg.dataset.toggle }); return; }
    const node = e.target.closest("[data-path]");
    if (node) send.select({ path: node.dataset.path, range: node.dataset.range || null });
  });
  watch(model, ["svg"], () => { if (view === "graph") drawGraph(); });
  watch(model, ["lines"], () => { if (view === "text") drawText(); });
  watch(model, ["labels", "states", "pending", "links", "selected", "strategies", "strategy", "preview", "peft_layout",
    "running_stats", "has_norm_stats", "matches", "search", "grads", "grad_table"], decorate);
  watch(model, ["reveal"], revealMatch);
  return {
    nodes: [canvas],
    draw: drawView,
    view: () => view,
    show(v) { view = v; drawView(); },
    zoom(f) { zoom = f(zoom); applyZoom(); },
    fit() {
      const svg = canvas.querySelector("svg.as-graph");
      if (!svg) return;
      zoom = Math.min(1, (canvas.clientWidth - 16) / +svg.getAttribute("viewBox").split(" ")[2]);
      applyZoom();
    },
  };
}

// -- toolbar: adapter, add-in and method pickers, search, view and zoom ------------------------------
function pickers({ model, send, root }) {
  const adapterSel = h("select", { "data-role": "adapter", title: "the named adapter that runs and is edited" });
  const adapterBox = h("label", { class: "as-adapter as-hidden" }, "Adapter ", adapterSel);
  const addinSel = h("select", { "data-role": "addin", title: "add-in" });
  const methodSel = h("select", { "data-role": "method", title: "method (those that can run at the clicked side)" });
  const pending = h("span", { class: "as-pending", "data-role": "pending" });

  const drawAddins = () => fillSelect(addinSel, model.get("addin_names") || [], model.get("addin"));
  const drawMethods = () => fillSelect(methodSel, model.get("methods") || [], model.get("method"));
  function drawPending() {
    const p = model.get("pending");
    pending.textContent = p ? `started at ${p}: click another point for {in}…{out}, the same one for {inout}, Esc cancels` : "";
  }
  function drawAdapters() {
    const names = model.get("adapter_names") || [];
    const active = model.get("active_adapter") || "";
    adapterBox.classList.toggle("as-hidden", !names.length);
    root.dataset.activeAdapter = active;
    if (!names.length) return;
    fillSelect(adapterSel, [""].concat(names), active);
    adapterSel.options[0].textContent = "(none: bare model)";
    for (const o of adapterSel.options) if (o.value) o.textContent = o.value === active ? `${o.value} (active)` : o.value;
  }

  addinSel.addEventListener("change", () => send.addin({ name: addinSel.value }));
  methodSel.addEventListener("change", () => send.method({ name: methodSel.value }));
  adapterSel.addEventListener("change", () => send.adapter({ name: adapterSel.value }));
  watch(model, ["addin_names", "addin"], drawAddins);
  watch(model, ["methods", "method"], drawMethods);
  watch(model, ["pending"], drawPending);
  watch(model, ["adapter_names", "active_adapter"], drawAdapters);
  return {
    nodes: [adapterBox, h("label", {}, "Add-in ", addinSel), h("label", {}, "Method ", methodSel), pending],
    draw() { drawAddins(); drawMethods(); drawPending(); drawAdapters(); },
  };
}

function searchBox({ model, send }) {
  const search = h("input", { type: "search", class: "as-search", "data-role": "search", placeholder: "find a module (fc2, blocks.7.*, Linear)", spellcheck: "false" });
  const found = h("span", { class: "as-found", "data-role": "search-count" });
  function draw() {
    const m = model.get("matches") || [];
    found.textContent = model.get("search") ? `${m.length} match${m.length === 1 ? "" : "es"}` : "";
  }
  let timer = null;
  search.addEventListener("keydown", (e) => {
    e.stopPropagation();
    if (e.key === "Enter") { clearTimeout(timer); send.search({ query: search.value }); }
  });
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => send.search({ query: search.value }), 200);
  });
  watch(model, ["matches", "search"], draw);
  return { nodes: [search, found], draw };
}

function viewControls(canvas) {
  const viewGraph = h("button", { "data-role": "view-graph", class: "as-tab", text: "Graph" });
  const viewText = h("button", { "data-role": "view-text", class: "as-tab", text: "print(model)" });
  const zoomOut = h("button", { "data-role": "zoom-out", text: "−", title: "zoom out" });
  const zoomIn = h("button", { "data-role": "zoom-in", text: "+", title: "zoom in" });
  const zoomFit = h("button", { "data-role": "zoom-fit", text: "fit", title: "fit the width" });
  function draw() {
    viewGraph.classList.toggle("as-on", canvas.view() === "graph");
    viewText.classList.toggle("as-on", canvas.view() === "text");
    for (const b of [zoomIn, zoomOut, zoomFit]) b.disabled = canvas.view() !== "graph";
  }
  viewGraph.addEventListener("click", () => { canvas.show("graph"); draw(); });
  viewText.addEventListener("click", () => { canvas.show("text"); draw(); });
  zoomIn.addEventListener("click", () => canvas.zoom((z) => Math.min(z * 1.25, 4)));
  zoomOut.addEventListener("click", () => canvas.zoom((z) => Math.max(z / 1.25, 0.1)));
  zoomFit.addEventListener("click", () => canvas.fit());
  return { nodes: [viewGraph, viewText, zoomOut, zoomIn, zoomFit], draw };
}

function toolbar(ctx, canvas) {
  const picks = pickers(ctx), find = searchBox(ctx), views = viewControls(canvas);
  return {
    nodes: [h("div", { class: "as-toolbar" }, ...picks.nodes, h("span", { class: "as-spacer" }), ...find.nodes,
      ...views.nodes)],
    draw() { picks.draw(); find.draw(); views.draw(); },
  };
}

// -- side panel: details, settings, strategy, config string, placements -----------------------------
function detailsPanel({ model }) {
  const details = h("div", { class: "as-details", "data-role": "details" });
  function draw() {
    const d = model.get("selected") || {};
    if (!d.path) { details.textContent = "Click a module for details, a dot (before/after a module) to place an add-in."; return; }
    const shape = (x) => (x ? `[${x.join(", ")}]` : "?");
    const places = (d.placements || []).length ? `\nplacements here:\n  ${d.placements.join("\n  ")}` : "\nno placements here";
    details.textContent = `${d.written || d.path}${d.range ? ` [${d.range}]` : ""} · ${d.class} · in ${shape(d.input)} → out ${shape(d.output)} · ${d.params.toLocaleString()} params (${d.trainable})` + (d.extra ? `\n${d.extra}` : "") + (d.note ? `\n${d.note}` : "") + places;
  }
  watch(model, ["selected"], draw);
  return { nodes: [details], draw };
}

// a docstring's help: ``name`` becomes <code>name</code>, never raw backticks
function helpText(help) {
  const el = h("span", { class: "as-fhelp" });
  (help || "").split(/``(.+?)``/).forEach((part, i) => { if (part) el.append(i % 2 ? h("code", { text: part }) : part); });
  return el;
}

function settingField(f) {
  const plain = (f.help || "").replace(/``(.+?)``/g, "$1");
  const attrs = { "data-setting": f.name, title: plain || f.name, name: f.name };
  const input = f.kind === "bool" ? h("input", { ...attrs, type: "checkbox" })
    : (f.choices || []).length
      ? h("select", attrs, ...f.choices.map((c) => h("option", { value: c, text: c })))
    : h("input", { ...attrs, type: f.kind === "str" ? "text" : "number", step: f.kind === "int" ? "1" : "any",
      placeholder: f.optional ? "none" : String(f.default) });
  return h("label", { class: "as-field", "data-depends": f.depends || "" }, h("span", { class: "as-fname", text: f.name }), input,
    helpText(f.help));
}

function settingsPanel({ model, send }) {
  const settingsBox = h("div", { class: "as-settings", "data-role": "settings" });
  function draw() {
    const fields = model.get("settings_form") || [];
    const key = fields.map((f) => `${f.name}:${f.kind}`).join(",") + "|" + model.get("addin");
    if (settingsBox.dataset.key !== key) {
      settingsBox.dataset.key = key;
      settingsBox.replaceChildren(...fields.map(settingField));
      if (!fields.length) settingsBox.textContent = "(this add-in takes no settings)";
    }
    const on = Object.fromEntries(fields.map((f) => [f.name, !!f.value]));
    for (const f of fields) {
      const input = settingsBox.querySelector(`[data-setting="${CSS.escape(f.name)}"]`);
      // a refinement (velora_groups) shows only while its switch (velora) is on
      if (input && f.depends) input.closest(".as-field").classList.toggle("as-hidden", !on[f.depends]);
      if (!input || input === document.activeElement) continue;
      if (f.kind === "bool") input.checked = !!f.value;
      else input.value = f.value === null || f.value === undefined ? "" : String(f.value);
    }
  }
  settingsBox.addEventListener("change", (e) => {
    const f = e.target.closest("[data-setting]");
    if (f) send.setting({ name: f.dataset.setting, value: f.type === "checkbox" ? String(f.checked) : f.value });
  });
  settingsBox.addEventListener("keydown", (e) => e.stopPropagation());
  watch(model, ["settings_form", "addin"], draw);
  return { nodes: [heading("Settings of the add-in"), settingsBox], draw };
}

function strategyPanel({ model, send }) {
  const strategySel = h("select", { "data-role": "strategy", title: "a strategy fills the whole config" });
  const targets = h("input", { class: "as-targets", "data-role": "strategy-targets", placeholder: "lora: qkv, fc1 · partial_k: 2", spellcheck: "false" });
  const applyStrategy = h("button", { "data-role": "apply-strategy", text: "Apply strategy" });
  const peftLayout = h("input", { type: "checkbox", "data-role": "peft-layout" });
  const peftLabel = h("label", {
    class: "as-peft",
    title: "LoRA in PEFT's layout (layout=peft): what Export PEFT needs for conv layers; "
      + "applies to the LoRA strategies, new LoRAs and the LoRAs in the string",
  }, peftLayout, " PEFT layout");
  const statsBox = h("input", { type: "checkbox", "data-role": "running-stats" });
  const statsLabel = h("label", {
    class: "as-peft as-hidden",
    title: "BatchNorm statistics follow the training data (running_stats(*)) and ship with the adapters; "
      + "off (default): they stay the base model's, frozen like its weights",
  }, statsBox, " update BatchNorm statistics");
  const previewEl = h("div", { class: "as-preview-text", "data-role": "strategy-preview" });
  function draw() {
    fillSelect(strategySel, [""].concat(model.get("strategies") || []), model.get("strategy"));
    strategySel.options[0].textContent = "(choose a strategy)";
    targets.classList.toggle("as-hidden", !["lora", "partial_k"].includes(model.get("strategy")));
    applyStrategy.disabled = !model.get("strategy");
    peftLayout.checked = !!model.get("peft_layout");
    statsBox.checked = !!model.get("running_stats");
    statsLabel.classList.toggle("as-hidden", !model.get("has_norm_stats"));
    const pv = model.get("preview") || {};
    previewEl.textContent = pv.config !== undefined
      ? `preview (orange rings in the graph): ${pv.count} placement(s)${pv.trainable && pv.trainable.length ? `, trainable(${pv.trainable.join(", ")})` : ""}; Apply strategy to use it` : "";
  }
  const preview = () => send.strategy({ name: strategySel.value, targets: targets.value });
  strategySel.addEventListener("change", preview);
  targets.addEventListener("keydown", (e) => e.stopPropagation());
  targets.addEventListener("change", preview);
  applyStrategy.addEventListener("click", () => send.applyStrategy({ name: strategySel.value, targets: targets.value }));
  statsBox.addEventListener("change", () => send.runningStats({ value: statsBox.checked }));
  peftLayout.addEventListener("change", () => send.setting({
    addin: "LoRA", name: "layout", value: peftLayout.checked ? "peft" : "balanced",
  }));
  watch(model, ["strategies", "strategy", "preview", "peft_layout", "running_stats", "has_norm_stats"], draw);
  return { nodes: [heading("Strategy"), row(strategySel, targets, applyStrategy, peftLabel, statsLabel), previewEl], draw };
}

function configPanel(ctx) {
  const { model, send, root } = ctx;
  const configEl = h("pre", { class: "as-config", "data-role": "config" });
  const copyBtn = h("button", { "data-role": "copy", text: "Copy" });
  const input = h("textarea", { class: "as-input", "data-role": "config-input", rows: "3", spellcheck: "false",
    placeholder: "paste a config string; Enter applies, Shift+Enter adds a line" });
  const applyBtn = h("button", { "data-role": "apply", text: "Apply" });
  const clearBtn = h("button", { "data-role": "clear", text: "Clear all" });
  const errorEl = h("pre", { class: "as-error", "data-role": "error" });
  const more = h("button", { class: "as-more as-hidden", "data-role": "config-more", title: "show every line of the string" });
  let showAll = false;
  function drawFold() {
    const n = (model.get("config") || "").split("\n").length;
    const long = n > FOLD_AT;
    more.classList.toggle("as-hidden", !long);
    more.textContent = showAll ? "show fewer" : `show all ${n} lines`;
    configEl.classList.toggle("as-clip", long && !showAll);
    configEl.dataset.lines = String(n);
  }
  more.addEventListener("click", () => { showAll = !showAll; drawFold(); });
  function drawConfig() {
    const text = model.get("config");
    drawTokens(configEl, text);
    configEl.classList.toggle("as-empty", !text);
    drawFold();
    if (ctx.clickedAt !== null) {
      root.dataset.clickLatencyMs = (performance.now() - ctx.clickedAt).toFixed(1);
      ctx.clickedAt = null;
    }
    clearBtn.disabled = !(model.get("entries") || []).length;
  }
  function drawError() {
    errorEl.textContent = model.get("error");
    errorEl.classList.toggle("as-hidden", !model.get("error"));
  }
  input.addEventListener("keydown", (e) => {
    e.stopPropagation(); // keep JupyterLab's notebook shortcuts out of the text field
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send.apply({ text: input.value }); }
  });
  applyBtn.addEventListener("click", () => send.apply({ text: input.value }));
  clearBtn.addEventListener("click", () => send.clear());
  copyBtn.addEventListener("click", async () => {
    const text = model.get("config");
    try { await navigator.clipboard.writeText(text); }
    catch (_) {
      const ta = h("textarea"); ta.value = text; root.append(ta); ta.select();
      document.execCommand("copy"); ta.remove();
    }
    copyBtn.textContent = "Copied";
    setTimeout(() => { copyBtn.textContent = "Copy"; }, 1200);
  });
  watch(model, ["config", "entries"], drawConfig);
  watch(model, ["error"], drawError);
  return {
    nodes: [h("div", { class: "as-h" }, h("span", { text: "Config string" }), h("span", {}, more, copyBtn)), configEl, input,
      row(applyBtn, clearBtn), errorEl],
    draw() { drawConfig(); drawError(); },
  };
}

// placements: one row per line of the string with a ×; past FOLD_AT rows, grouped by add-in, method and
// settings (`LoRA.adapt_output, r=4 · 53 placements`), each group folded until opened
function placementsPanel({ model, send }) {
  const head = heading("Placements");
  const list = h("div", { class: "as-placements", "data-role": "placements" });
  const open = new Set();
  const item = (e, text) => h("li", { "data-index": String(e.index) }, tokens("code", {}, text),
    h("button", { "data-role": "remove", "data-index": String(e.index), title: "remove this placement", text: "×" }));
  function draw() {
    const rows = model.get("entries") || [];
    const total = rows.reduce((n, e) => n + (e.count || 1), 0);
    const groups = new Map();
    for (const e of rows) {
      if (!groups.has(e.group)) groups.set(e.group, []);
      groups.get(e.group).push(e);
    }
    head.textContent = rows.length ? `Placements (${total}${groups.size > 1 ? ` in ${groups.size} groups` : ""})` : "Placements";
    list.dataset.count = String(total);
    if (rows.length <= FOLD_AT) {
      list.replaceChildren(h("ul", { class: "as-list" }, ...rows.map((e) => item(e, e.text))));
      return;
    }
    list.replaceChildren(...[...groups].map(([key, es]) => {
      const n = es.reduce((k, e) => k + (e.count || 1), 0);
      const box = h("details", { class: "as-group", "data-group-key": key, "data-count": String(n) });
      box.open = open.has(key);
      box.ontoggle = () => { if (box.open) open.add(key); else open.delete(key); };
      box.append(h("summary", {}, tokens("code", {}, `${key}`), h("span", { class: "as-count", text: ` · ${n} placement${n === 1 ? "" : "s"}${es.length !== n ? ` in ${es.length} lines` : ""}` })),
        h("ul", { class: "as-list" }, ...es.map((e) => item(e, e.where || e.text))));
      return box;
    }));
  }
  list.addEventListener("click", (e) => {
    const b = e.target.closest("[data-role=remove]");
    if (b) send.remove({ index: +b.dataset.index });
  });
  watch(model, ["config", "entries"], draw);
  return { nodes: [head, list], draw };
}

// -- training: train/stop, status, live plot, update norms; the finished runs ------------------------
function trainingPanel({ model, send, root }) {
  const trainBtn = h("button", { "data-role": "train", class: "as-primary", text: "Train" });
  const stopBtn = h("button", { "data-role": "stop", text: "Stop" });
  const status = h("div", { class: "as-status", "data-role": "status" });
  const plot = s("svg", { class: "as-plot", "data-role": "loss-plot", width: "380", height: "170" });
  const legend = h("div", { class: "as-legend as-hidden", "data-role": "grad-legend" });
  const gradTable = h("table", { class: "as-gradtable", "data-role": "grad-table" });
  // the update-norm table (one row per add-in) lives in the scrolling part, folded past FOLD_AT rows
  const gradBox = h("details", { class: "as-fold as-hidden", "data-role": "grad-fold" });
  const gradSummary = h("summary", { class: "as-h" });
  gradBox.append(gradSummary, gradTable);
  function drawTraining() {
    const st = model.get("state");
    root.dataset.state = st;
    trainBtn.disabled = !model.get("can_train") || st !== "idle";
    stopBtn.disabled = st !== "training";
    status.textContent = model.get("status");
    drawPlot(plot, model.get("plot") || {});
  }
  function drawGrads() {
    const grads = model.get("grads") || {};
    const vals = Object.values(grads);
    legend.classList.toggle("as-hidden", !vals.length);
    if (vals.length) {
      const lo = Math.min(...vals), hi = Math.max(...vals);
      legend.replaceChildren(h("span", { text: "update norm per step: " }), h("span", { text: lo.toExponential(2) }),
        h("span", { class: "as-ramp" }), h("span", { text: hi.toExponential(2) }));
    }
    const rows = model.get("grad_table") || [];
    gradBox.classList.toggle("as-hidden", !rows.length);
    if (rows.length && gradBox.dataset.rows !== String(rows.length)) gradBox.open = rows.length <= FOLD_AT;
    gradBox.dataset.rows = String(rows.length);
    gradSummary.textContent = `Update norms of the last run (${rows.length} add-in${rows.length === 1 ? "" : "s"})`;
    gradTable.replaceChildren(h("tr", {}, h("th", { text: "add-in" }), h("th", { text: "placement" }), h("th", { text: "update norm / step" })),
      ...rows.map((r) => h("tr", { "data-key": r.key }, h("td", { text: r.key }), h("td", { text: r.placement }), h("td", { text: r.norm.toExponential(3) }))));
  }
  trainBtn.addEventListener("click", () => send.train());
  stopBtn.addEventListener("click", () => send.stop());
  watch(model, ["state", "status", "plot", "can_train"], drawTraining);
  watch(model, ["grads", "grad_table"], drawGrads);
  return {
    actions: [row(trainBtn, stopBtn, status), plot, legend],   // always in view, above the lists
    nodes: [gradBox],
    draw() { drawTraining(); drawGrads(); },
  };
}

// a run's string: its first two lines and how many more (all of it in the tooltip; clicking restores it)
function runString(text) {
  const lines = text.split("\n");
  const el = tokens("code", { title: text }, lines.slice(0, 2).join("\n"));
  if (lines.length > 2) el.append(h("span", { class: "as-muted", text: `\n… ${lines.length - 2} more line(s)` }));
  return el;
}

function runsPanel({ model, send }) {
  const runsEl = h("ul", { class: "as-runs", "data-role": "runs" });
  function draw() {
    const runs = model.get("runs") || [];
    runsEl.replaceChildren(...runs.map((r) => {
      const m = r.metrics || {};
      const acc = m.val_acc1 ? ` · val Acc@1 ${m.val_acc1[m.val_acc1.length - 1].toFixed(2)}%` : "";
      const acc5 = m.val_acc5 ? ` · Acc@5 ${m.val_acc5[m.val_acc5.length - 1].toFixed(2)}%` : "";
      return h("li", { "data-run": String(r.n), title: "click to restore this run's config string" },
        h("b", { text: `run ${r.n}` }),
        h("span", { text: ` · ${m.steps} steps · last step loss ${m.loss === null ? "?" : m.loss.toFixed(4)}${acc}${acc5} · ${r.trainable.toLocaleString()} trainable` }),
        runString(r.config));
    }));
    if (!runs.length) runsEl.append(h("li", { class: "as-muted", text: "finished runs appear here (the plot overlays the last 3)" }));
  }
  runsEl.addEventListener("click", (e) => {
    const r = e.target.closest("[data-run]");
    if (r) send.run({ n: +r.dataset.run });
  });
  watch(model, ["runs"], draw);
  return { nodes: [heading("Runs"), runsEl], draw };
}

// -- export: adapters file, PEFT folder, Python code ----------------------------------------------------
function exportPanel({ model, send }) {
  const saveBtn = h("button", { "data-role": "save-adapters", text: "Save adapters", title: "adapters.safetensors (add-in weights + this string)" });
  const peftBtn = h("button", { "data-role": "export-peft", text: "Export PEFT", title: "adapter_model.safetensors + adapter_config.json" });
  const codeBtn = h("button", { "data-role": "copy-code", text: "Copy code", title: "Python that rebuilds this attachment with studio.attach" });
  const codeEl = h("pre", { class: "as-code as-hidden", "data-role": "code" });
  function draw() {
    const code = model.get("code");
    codeEl.textContent = code;
    codeEl.classList.toggle("as-hidden", !code);
    const has = !!model.get("config");
    saveBtn.disabled = !has; peftBtn.disabled = !has;
  }
  let wantCopy = false;
  saveBtn.addEventListener("click", () => send.saveAdapters());
  peftBtn.addEventListener("click", () => send.exportPeft());
  codeBtn.addEventListener("click", () => { wantCopy = true; send.copyCode(); });
  watch(model, ["code", "config"], draw);
  model.on("change:code", async () => {
    if (!wantCopy) return;
    wantCopy = false;
    try { await navigator.clipboard.writeText(model.get("code")); } catch (_) { /* shown below the buttons anyway */ }
  });
  return { actions: [row(saveBtn, peftBtn, codeBtn)], nodes: [codeEl], draw };
}

// -- the widget -------------------------------------------------------------------------------------
function render({ model, el }) {
  const t0 = performance.now();
  const root = h("div", { class: "as-root", "data-role": "studio", "data-state": model.get("state"), tabindex: "0" });
  const ctx = { model, send: senders(model), root, clickedAt: null };
  const canvas = graphCanvas(ctx);
  // the side panel: the actions (Train/Stop, status, plot, export buttons and code) on top, always in view;
  // below them the rest scrolls on its own (details, string, placements, strategy, settings, norms, runs)
  const training = trainingPanel(ctx), exporting = exportPanel(ctx), runs = runsPanel(ctx);
  const listed = [detailsPanel, configPanel, placementsPanel, strategyPanel, settingsPanel].map((p) => p(ctx));
  const side = [training, exporting, ...listed, runs];
  const panels = [headerPanel(ctx), toolbar(ctx, canvas), canvas, ...side];
  const actions = h("div", { class: "as-actions", "data-role": "actions" },
    ...training.actions, ...exporting.actions, ...exporting.nodes);
  const body = h("div", { class: "as-side-body", "data-role": "side-body" },
    ...listed.flatMap((p) => p.nodes), ...training.nodes, ...runs.nodes);
  root.append(...panels[0].nodes, ...panels[1].nodes,
    h("div", { class: "as-main" }, ...canvas.nodes, h("div", { class: "as-side" }, actions, body)));
  el.append(root);
  root.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && model.get("pending")) { e.preventDefault(); e.stopPropagation(); ctx.send.cancel(); }
  });
  for (const p of panels) p.draw();
  root.dataset.initialRenderMs = (performance.now() - t0).toFixed(1);
  root.dataset.ready = "1";
  return () => {};
}

export default { render };
