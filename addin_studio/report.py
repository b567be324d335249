"""The HTML report of a run: the model's modules with the add-in points, the config string, the loss plot.

matplotlib is imported only inside :func:`plot_loss` (Agg backend), so the core stays free of it.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Mapping, Sequence

BOX_W, BOX_H, GAP, LEFT, TOP = 300, 30, 18, 20, 20


def plot_loss(history: Mapping[str, Sequence[float]], path: str | Path, title: str = "Training") -> Path:
    """Write a PNG of the per-step loss (and per-epoch validation Acc@1 when present) to ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    loss = list(history.get("loss", []))
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    try:
        ax.plot(range(1, len(loss) + 1), loss, color="#4477aa", lw=1, alpha=0.5, label="loss (step)")
        if len(loss) >= 10:
            k = max(2, len(loss) // 30)
            smooth = [sum(loss[max(0, i - k + 1):i + 1]) / len(loss[max(0, i - k + 1):i + 1])
                      for i in range(len(loss))]
            ax.plot(range(1, len(loss) + 1), smooth, color="#224477", lw=2, label=f"loss (mean of {k})")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(title)
        acc = list(history.get("val_acc1", []))
        handles, labels = ax.get_legend_handles_labels()
        if acc and loss:
            per_epoch = len(loss) / max(1, len(history.get("train_loss", acc)))
            ax2 = ax.twinx()
            ax2.plot([per_epoch * (i + 1) for i in range(len(acc))], acc, "o-", color="#cc6677",
                     label="val Acc@1 (%)")
            ax2.set_ylabel("Acc@1 (%)")
            ax2.set_ylim(0, 100)
            h2, l2 = ax2.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        ax.legend(handles, labels, loc="center right", fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def _placement_labels(config: Any) -> tuple[dict[str, list[str]], list[tuple[str, str, str]]]:
    """Point -> labels of the placements there (``#1``, ``#2 in``, ``#2 out``: numbered in config
    order), and the across arcs (source point, target point, label)."""
    labels: dict[str, list[str]] = {}
    arcs = []
    for n, p in enumerate(config.placements, 1):
        if p.kind == "inout":
            labels.setdefault(str(p.target), []).append(f"#{n}")
        else:
            labels.setdefault(str(p.source), []).append(f"#{n} in")
            labels.setdefault(str(p.target), []).append(f"#{n} out")
            arcs.append((str(p.source), str(p.target), f"#{n}"))
    return labels, arcs


def graph_svg(graph: Any, config: Any) -> str:
    """An SVG of the executed modules in order, with every point and the add-ins placed at them.

    Each module box carries ``data-path``; each point (a dot above/below the box) ``data-point`` and,
    when it holds placements, ``data-placement`` — the attributes of the Studio widget's DOM contract.
    """
    if isinstance(config, str):
        from .config import parse

        config = parse(config)
    labels, arcs = _placement_labels(config)
    placed = {pt.split(":")[0] for pt in labels}
    nodes = [n for n in graph.executed() if n.is_leaf or n.path in placed]
    y: dict[str, float] = {}
    parts = []
    for i, node in enumerate(nodes):
        top = TOP + i * (BOX_H + GAP)
        shape = "x".join(str(s) for s in node.output_shape) if node.output_shape else "?"
        parts.append(
            f'<g data-path="{html.escape(node.path)}"><rect x="{LEFT}" y="{top}" width="{BOX_W}" '
            f'height="{BOX_H}" rx="5" fill="#eef3fb" stroke="#4477aa"/>'
            f'<text x="{LEFT + 8}" y="{top + 19}" font-size="12">{html.escape(node.path)} '
            f'({html.escape(node.class_name)}) → {shape}</text></g>')
        for side, py in (("pre", top - 4), ("post", top + BOX_H + 4)):
            point = f"{node.path}:{side}"
            y[point] = py
            held = labels.get(point)
            attr = f' data-placement="{html.escape(", ".join(held))}"' if held else ""
            fill = "#cc6677" if held else "#ffffff"
            parts.append(f'<circle data-point="{html.escape(point)}"{attr} cx="{LEFT + BOX_W / 2}" cy="{py}" '
                         f'r="{5 if held else 3}" fill="{fill}" stroke="#888"/>')
            if held:
                parts.append(f'<text x="{LEFT + BOX_W / 2 + 9}" y="{py + 4}" font-size="10" '
                             f'fill="#aa3355">{html.escape(", ".join(held))}</text>')
    for k, (src, dst, text) in enumerate(arcs):
        if src not in y or dst not in y:
            continue
        x0 = LEFT + BOX_W + 10
        bend = x0 + 30 + 18 * k
        parts.append(f'<path d="M {x0} {y[src]} C {bend} {y[src]}, {bend} {y[dst]}, {x0} {y[dst]}" '
                     f'fill="none" stroke="#cc6677" stroke-width="2" marker-end="url(#arrow)"/>'
                     f'<text x="{bend + 4}" y="{(y[src] + y[dst]) / 2}" font-size="10" '
                     f'fill="#aa3355">{html.escape(text)}</text>')
    width = LEFT + BOX_W + 60 + 18 * len(arcs) + 200
    height = TOP + len(nodes) * (BOX_H + GAP) + 10
    legend = html.escape("; ".join(f"#{i}: {p.addin}.{p.method}" for i, p in enumerate(config.placements, 1)))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 20}" '
            f'font-family="sans-serif"><defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" '
            f'markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#cc6677"/>'
            f'</marker></defs>{"".join(parts)}<text x="{LEFT}" y="{height + 12}" font-size="11">{legend}</text></svg>')


def write_report(path: str | Path, *, title: str, config: Any, graph: Any = None,
                 loss_png: str | Path | None = None, results: Mapping[str, Any] | None = None,
                 parameters: str = "", notes: Sequence[str] = ()) -> Path:
    """Write a self-contained HTML report (the PNG is embedded) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = [f"<h1>{html.escape(title)}</h1>"]
    body += [f"<p>{html.escape(n)}</p>" for n in notes]
    body.append('<h2>Config string</h2><pre data-role="config">' + html.escape(str(config)) + "</pre>")
    if results:
        rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
                       for k, v in results.items())
        body.append(f"<h2>Results</h2><table>{rows}</table>")
    if parameters:
        body.append('<h2>Trainable parameters</h2><pre data-role="params">' + html.escape(parameters) + "</pre>")
    if loss_png is not None:
        data = base64.b64encode(Path(loss_png).read_bytes()).decode("ascii")
        body.append(f'<h2>Loss</h2><img data-role="loss-plot" alt="training loss" '
                    f'src="data:image/png;base64,{data}">')
    if graph is not None:
        body.append("<h2>Model and add-in points</h2><p>Modules in execution order; dots are insertion "
                    "points (above: input, below: output); red ones hold add-ins.</p>" + graph_svg(graph, config))
    page = ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>" + html.escape(title) + "</title>"
            "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
            "pre{background:#f5f5f5;padding:.8em;overflow-x:auto}th{text-align:left;padding-right:1.5em}"
            "</style></head><body>" + "\n".join(body) + "</body></html>\n")
    path.write_text(page, encoding="utf-8")
    return path


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)
