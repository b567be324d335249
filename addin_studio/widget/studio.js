// Addin Studio widget view. It only draws what the Python side computed and sends intents back
// ({type: "point" | "select" | "toggle" | "addin" | "method" | "apply" | "remove" | "clear" |
// "cancel" | "train" | "stop"}); parsing, validation and the config string all live in Python.

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
  const total = Math.max(lastStep, 10);
  svg.dataset.points = String(loss.length);
  svg.append(s("rect", { x: L, y: T, width: W - L - R, height: H - T - B, class: "as-plot-frame" }));
  if (!loss.length) {
    const t = s("text", { x: W / 2, y: H / 2, class: "as-plot-empty" });
    t.textContent = "loss per step appears here while training";
    svg.append(t);
    return;
  }
  const ys = loss.map((p) => p[1]);
  let lo = Math.min(...ys), hi = Math.max(...ys);
  if (hi - lo < 1e-9) { hi += 0.5; lo -= 0.5; }
  const x = (step) => L + ((W - L - R) * step) / total;
  const y = (v) => T + (H - T - B) * (1 - (v - lo) / (hi - lo));
  const ya = (a) => T + (H - T - B) * (1 - a / 100);
  const line = (pts, f, cls) => {
    const p = s("polyline", { class: cls, points: pts.map((q) => `${x(q[0]).toFixed(1)},${f(q[1]).toFixed(1)}`).join(" ") });
    svg.append(p);
  };
  line(loss, y, "as-plot-loss");
  line(smooth, y, "as-plot-smooth");
  if (val.length) {
    line(val, ya, "as-plot-val");
    for (const q of val) svg.append(s("circle", { cx: x(q[0]), cy: ya(q[1]), r: 3, class: "as-plot-valdot" }));
  }
  const label = (tx, ty, text, cls) => {
    const t = s("text", { x: tx, y: ty, class: cls });
    t.textContent = text;
    svg.append(t);
  };
  label(L - 4, T + 9, hi.toPrecision(3), "as-plot-tick as-end");
  label(L - 4, H - B, lo.toPrecision(3), "as-plot-tick as-end");
  label(L, H - 8, "step 0", "as-plot-tick");
  label(W - R, H - 8, `${lastStep}${data.total ? ` / ${data.total}` : ""}`, "as-plot-tick as-end");
  label(W - R + 4, T + 9, "100%", "as-plot-tick as-val");
  label(W - R + 4, H - B, "0%", "as-plot-tick as-val");
  const last = smooth.length ? smooth[smooth.length - 1][1] : loss[loss.length - 1][1];
  label(L + 6, T + 14, `loss ${last.toFixed(4)}` + (val.length ? ` · val acc ${val[val.length - 1][1].toFixed(1)}%` : ""), "as-plot-legend");
}

// -- the widget ----------------------------------------------------------------------------------
function render({ model, el }) {
  const t0 = performance.now();
  const send = (msg) => model.send(msg);
  let view = "graph";
  let zoom = 1;
  let clickedAt = null;

  const root = h("div", { class: "as-root", "data-role": "studio", "data-state": model.get("state"), tabindex: "0" });
  const title = h("span", { class: "as-title" });
  const params = h("span", { class: "as-params", "data-role": "params" });
  const notice = h("div", { class: "as-notice", "data-role": "notice" });
  const addinSel = h("select", { "data-role": "addin", title: "add-in" });
  const methodSel = h("select", { "data-role": "method", title: "method (those that can run at the clicked side)" });
  const pending = h("span", { class: "as-pending", "data-role": "pending" });
  const viewGraph = h("button", { "data-role": "view-graph", class: "as-tab", text: "Graph" });
  const viewText = h("button", { "data-role": "view-text", class: "as-tab", text: "print(model)" });
  const zoomOut = h("button", { "data-role": "zoom-out", text: "−", title: "zoom out" });
  const zoomIn = h("button", { "data-role": "zoom-in", text: "+", title: "zoom in" });
  const zoomFit = h("button", { "data-role": "zoom-fit", text: "fit", title: "fit the width" });
  const canvas = h("div", { class: "as-canvas", "data-role": "canvas" });
  const details = h("div", { class: "as-details", "data-role": "details" });
  const configEl = h("pre", { class: "as-config", "data-role": "config" });
  const copyBtn = h("button", { "data-role": "copy", text: "Copy" });
  const input = h("textarea", { class: "as-input", "data-role": "config-input", rows: "3", spellcheck: "false",
    placeholder: "paste a config string; Enter applies, Shift+Enter adds a line" });
  const applyBtn = h("button", { "data-role": "apply", text: "Apply" });
  const errorEl = h("pre", { class: "as-error", "data-role": "error" });
  const list = h("ul", { class: "as-list", "data-role": "placements" });
  const clearBtn = h("button", { "data-role": "clear", text: "Clear all" });
  const trainBtn = h("button", { "data-role": "train", class: "as-primary", text: "Train" });
  const stopBtn = h("button", { "data-role": "stop", text: "Stop" });
  const status = h("div", { class: "as-status", "data-role": "status" });
  const plot = s("svg", { class: "as-plot", "data-role": "loss-plot", width: "380", height: "170" });

  root.append(
    h("div", { class: "as-header" }, title, params),
    notice,
    h("div", { class: "as-toolbar" },
      h("label", {}, "Add-in ", addinSel), h("label", {}, "Method ", methodSel), pending,
      h("span", { class: "as-spacer" }), viewGraph, viewText, zoomOut, zoomIn, zoomFit),
    h("div", { class: "as-main" },
      canvas,
      h("div", { class: "as-side" },
        details,
        h("div", { class: "as-h" }, h("span", { text: "Config string" }), copyBtn),
        configEl,
        input,
        h("div", { class: "as-row" }, applyBtn, clearBtn),
        errorEl,
        h("div", { class: "as-h", text: "Placements" }),
        list,
        h("div", { class: "as-h", text: "Training" }),
        h("div", { class: "as-row" }, trainBtn, stopBtn),
        status,
        plot)));
  el.append(root);

  // -- drawing from traits --------------------------------------------------------------------
  function fillSelect(sel, names, value) {
    const cur = [...sel.options].map((o) => o.value).join("\n");
    if (cur !== names.join("\n")) sel.replaceChildren(...names.map((n) => h("option", { value: n, text: n })));
    sel.value = value;
  }

  function decorate() {
    // labels, states, the started point and across arrows on whatever view is shown
    const labels = model.get("labels") || {};
    const states = model.get("states") || {};
    const pend = model.get("pending");
    const sel = (model.get("selected") || {}).path;
    for (const p of canvas.querySelectorAll("[data-point]")) {
      const lab = labels[p.dataset.point];
      if (lab) p.setAttribute("data-placement", lab); else p.removeAttribute("data-placement");
      p.classList.toggle("as-pending", p.dataset.point === pend);
    }
    for (const n of canvas.querySelectorAll("[data-path]")) {
      const st = states[n.dataset.path];
      n.classList.toggle("as-s-trainable", st === "trainable");
      n.classList.toggle("as-s-frozen", st === "frozen");
      n.classList.toggle("as-s-partial", st === "partial");
      n.classList.toggle("as-selected", n.dataset.path === sel);
      const own = [...n.children].some((c) => c.hasAttribute && c.hasAttribute("data-placement"));
      n.classList.toggle("as-has-addin", own);
    }
    const overlay = canvas.querySelector(".as-overlay");
    if (overlay) {
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
  }

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
    const frag = document.createDocumentFragment();
    for (const line of model.get("lines") || []) {
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
    canvas.replaceChildren(box);
    decorate();
  }

  function drawView() {
    viewGraph.classList.toggle("as-on", view === "graph");
    viewText.classList.toggle("as-on", view === "text");
    for (const b of [zoomIn, zoomOut, zoomFit]) b.disabled = view !== "graph";
    if (view === "graph") drawGraph(); else drawText();
  }

  function drawConfig() {
    const text = model.get("config");
    configEl.textContent = text;
    configEl.classList.toggle("as-empty", !text);
    if (clickedAt !== null) {
      root.dataset.clickLatencyMs = (performance.now() - clickedAt).toFixed(1);
      clickedAt = null;
    }
    list.replaceChildren(...(model.get("entries") || []).map((e) =>
      h("li", {}, h("code", { text: e.text }),
        h("button", { "data-role": "remove", "data-index": String(e.index), title: "remove this placement", text: "×" }))));
    clearBtn.disabled = !(model.get("entries") || []).length;
  }

  function drawError() {
    errorEl.textContent = model.get("error");
    errorEl.classList.toggle("as-hidden", !model.get("error"));
  }

  function drawPending() {
    const p = model.get("pending");
    pending.textContent = p ? `started at ${p}: click another point for {in}…{out}, the same one for {inout}, Esc cancels` : "";
  }

  function drawDetails() {
    const d = model.get("selected") || {};
    if (!d.path) { details.textContent = "Click a module for details, a dot (before/after a module) to place an add-in."; return; }
    const shape = (x) => (x ? `[${x.join(", ")}]` : "?");
    details.textContent = `${d.path}${d.range ? ` [${d.range}]` : ""} · ${d.class} · in ${shape(d.input)} → out ${shape(d.output)} · ${d.params.toLocaleString()} params (${d.trainable})` + (d.extra ? `\n${d.extra}` : "");
  }

  function drawTraining() {
    const st = model.get("state");
    root.dataset.state = st;
    trainBtn.disabled = !model.get("can_train") || st !== "idle";
    stopBtn.disabled = st !== "training";
    status.textContent = model.get("status");
    const data = model.get("plot") || {};
    drawPlot(plot, data);
  }

  function drawAll() {
    title.textContent = model.get("title");
    params.textContent = model.get("params");
    notice.textContent = model.get("notice");
    notice.classList.toggle("as-hidden", !model.get("notice"));
    fillSelect(addinSel, model.get("addin_names") || [], model.get("addin"));
    fillSelect(methodSel, model.get("methods") || [], model.get("method"));
    drawConfig(); drawError(); drawPending(); drawDetails(); drawTraining(); drawView();
  }

  // -- intents --------------------------------------------------------------------------------
  canvas.addEventListener("click", (e) => {
    const pt = e.target.closest("[data-point]");
    if (pt) {
      clickedAt = performance.now();
      send({ type: "point", point: pt.dataset.point, group: pt.dataset.group || null });
      root.focus({ preventScroll: true });
      return;
    }
    const tg = e.target.closest("[data-toggle]");
    if (tg) { send({ type: "toggle", path: tg.dataset.toggle }); return; }
    const node = e.target.closest("[data-path]");
    if (node) send({ type: "select", path: node.dataset.path, range: node.dataset.range || null });
  });
  root.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && model.get("pending")) { e.preventDefault(); e.stopPropagation(); send({ type: "cancel" }); }
  });
  addinSel.addEventListener("change", () => send({ type: "addin", name: addinSel.value }));
  methodSel.addEventListener("change", () => send({ type: "method", name: methodSel.value }));
  input.addEventListener("keydown", (e) => {
    e.stopPropagation(); // keep JupyterLab's notebook shortcuts out of the text field
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send({ type: "apply", text: input.value }); }
  });
  applyBtn.addEventListener("click", () => send({ type: "apply", text: input.value }));
  clearBtn.addEventListener("click", () => send({ type: "clear" }));
  list.addEventListener("click", (e) => {
    const b = e.target.closest("[data-role=remove]");
    if (b) send({ type: "remove", index: +b.dataset.index });
  });
  trainBtn.addEventListener("click", () => send({ type: "train" }));
  stopBtn.addEventListener("click", () => send({ type: "stop" }));
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
  viewGraph.addEventListener("click", () => { view = "graph"; drawView(); });
  viewText.addEventListener("click", () => { view = "text"; drawView(); });
  zoomIn.addEventListener("click", () => { zoom = Math.min(zoom * 1.25, 4); applyZoom(); });
  zoomOut.addEventListener("click", () => { zoom = Math.max(zoom / 1.25, 0.1); applyZoom(); });
  zoomFit.addEventListener("click", () => {
    const svg = canvas.querySelector("svg.as-graph");
    if (!svg) return;
    zoom = Math.min(1, (canvas.clientWidth - 16) / +svg.getAttribute("viewBox").split(" ")[2]);
    applyZoom();
  });

  // -- trait changes ----------------------------------------------------------------------------
  const on = (names, fn) => { for (const n of names) model.on(`change:${n}`, fn); };
  on(["svg"], () => { if (view === "graph") drawGraph(); });
  on(["lines"], () => { if (view === "text") drawText(); });
  on(["labels", "states", "pending", "links", "selected"], () => { decorate(); drawPending(); drawDetails(); });
  on(["config", "entries"], drawConfig);
  on(["error"], drawError);
  on(["params"], () => { params.textContent = model.get("params"); });
  on(["notice"], () => { notice.textContent = model.get("notice"); notice.classList.toggle("as-hidden", !model.get("notice")); });
  on(["addin_names", "addin"], () => fillSelect(addinSel, model.get("addin_names") || [], model.get("addin")));
  on(["methods", "method"], () => fillSelect(methodSel, model.get("methods") || [], model.get("method")));
  on(["state", "status", "plot", "can_train"], drawTraining);

  drawAll();
  root.dataset.initialRenderMs = (performance.now() - t0).toFixed(1);
  root.dataset.ready = "1";
  return () => {};
}

export default { render };
