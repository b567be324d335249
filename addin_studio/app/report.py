"""The HTML report of a run: the model's modules with the add-in points, the config string, the loss plot.

The graph and the loss plot come from :mod:`addin_studio.render`, as in the Studio; matplotlib is
imported only when the PNG is made (Agg backend), so the core stays free of it.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import parse
from ..render.plot import history_png
from ..render.svg import graph_svg as render_graph_svg


def plot_loss(history: Mapping[str, Sequence[float]], path: str | Path, title: str = "Training") -> Path:
    """Write a PNG of the per-step loss, smoothed as everywhere else (and per-epoch validation Acc@1
    when present) to ``path``."""
    loss = list(history.get("loss", []))
    acc = list(history.get("val_acc1", []))
    per_epoch = len(loss) / max(1, len(history.get("train_loss", acc)))
    val = [(round(per_epoch * (i + 1)), a) for i, a in enumerate(acc)] if loss else []
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(history_png(loss, val, title=title, size=(7, 3.6), dpi=110))
    return path


def graph_svg(graph: Any, config: Any) -> str:
    """The Studio's picture of the model with every placement numbered (``#1``, ``#2 in``, ``#2 out``:
    config order), carrying the widget's ``data-path`` / ``data-point`` / ``data-placement``."""
    return render_graph_svg(graph, config, style="numbered")


def write_report(
    path: str | Path,
    *,
    title: str,
    config: Any,
    graph: Any = None,
    loss_png: str | Path | None = None,
    results: Mapping[str, Any] | None = None,
    parameters: str = "",
    notes: Sequence[str] = (),
) -> Path:
    """Write a self-contained HTML report (the PNG is embedded) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = [f"<h1>{html.escape(title)}</h1>"]
    body += [f"<p>{html.escape(n)}</p>" for n in notes]
    body.append('<h2>Config string</h2><pre data-role="config">' + html.escape(str(config)) + "</pre>")
    if results:
        rows = "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
            for k, v in results.items()
        )
        body.append(f"<h2>Results</h2><table>{rows}</table>")
    if parameters:
        body.append(
            '<h2>Trainable parameters</h2><pre data-role="params">' + html.escape(parameters) + "</pre>"
        )
    if loss_png is not None:
        data = base64.b64encode(Path(loss_png).read_bytes()).decode("ascii")
        body.append(
            f'<h2>Loss</h2><img data-role="loss-plot" alt="training loss" src="data:image/png;base64,{data}">'
        )
    if graph is not None:
        cfg = parse(config) if isinstance(config, str) else config
        legend = "".join(
            f"<li>#{i}: {html.escape(f'{p.addin}.{p.method}')}</li>" for i, p in enumerate(cfg.placements, 1)
        )
        body.append(
            "<h2>Model and add-in points</h2><p>Modules in execution order; dots are insertion "
            "points (above: input, below: output); orange ones hold add-ins.</p>"
            f'<ol class="legend">{legend}</ol>' + graph_svg(graph, cfg)
        )
    page = (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>' + html.escape(title) + "</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
        "pre{background:#f5f5f5;padding:.8em;overflow-x:auto}th{text-align:left;padding-right:1.5em}"
        "</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )
    path.write_text(page, encoding="utf-8")
    return path


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)
