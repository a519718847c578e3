"""``refgen compare --html``: one self-contained page (no network, nothing linked), per prompt a
layer x position heatmap of the error against tolerance and the per-layer curve against the
rounding floor with the first divergence marked. The figures are matplotlib's, embedded as
base64 PNG."""

from __future__ import annotations

import base64
import contextlib
import html
import io
import logging
import math
import os
import tempfile
from collections.abc import Iterator

import numpy as np

from refgen.compare.port import PortComparison, PromptVerdict, TensorVerdict
from refgen.text import shorten

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; background: #fff; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; }
.diverged { color: #b00020; } .within { color: #1b5e20; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
tr.beyond td { background: #fde7e9; } tr.first td { background: #f8c4c9; font-weight: bold; }
img { max-width: 100%; }
pre { background: #f6f6f6; padding: 0.5em; white-space: pre-wrap; }
"""


def render(result: PortComparison) -> str:
    """The page as text (UTF-8)."""
    verdict = "diverged" if result.diverged else "within"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>refgen compare: {html.escape(result.port)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>refgen compare</h1>",
        f'<p class="{verdict}"><strong>{html.escape(result.summary())}</strong></p>',
        "<p>reference: <code>"
        + html.escape(result.reference)
        + "</code><br>port: <code>"
        + html.escape(result.port)
        + "</code> (names: "
        + html.escape(result.name_map)
        + ")<br>tolerance: "
        + html.escape(result.rule())
        + "</p>",
    ]
    for p in result.prompts:
        parts += _prompt_section(p)
    if result.notes:
        parts.append("<h2>Notes</h2><pre>" + html.escape("\n".join(result.notes)) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _prompt_section(p: PromptVerdict) -> list[str]:
    first = f"first divergence at {p.first.where}" if p.first else "every tensor within"
    out = [f"<h2>Prompt {p.prompt} ({html.escape(shorten(p.text))}): {html.escape(first)}</h2>"]
    if p.input_ids is not None:
        out.append(f"<p>input ids: {html.escape(p.input_ids)}</p>")
    figure = _figure(p)
    if figure is not None:
        out.append(f'<img alt="error per layer and position, prompt {p.prompt}" src="{figure}">')
    out.append(
        "<table><tr><th>tensor</th><th>vs tolerance</th><th>NMSE</th><th>dB</th>"
        "<th>cosine</th><th>max abs</th><th>verdict</th></tr>"
    )
    for t in p.tensors:
        cls = "first" if t is p.first else "beyond" if not t.within else ""
        out.append(f'<tr class="{cls}">' + "".join(f"<td>{c}</td>" for c in _cells(t)) + "</tr>")
    out.append("</table>")
    return out


def _cells(t: TensorVerdict) -> list[str]:
    verdict = "within" if t.within else "BEYOND"
    if t.metrics is None or t.allowance is None:
        return [html.escape(t.where), html.escape(t.problem or ""), "", "", "", "", verdict]
    mt = t.metrics
    return [
        html.escape(t.where),
        html.escape(t.allowance.describe(t.ratio)),
        f"{mt.nmse:.3g}",
        f"{mt.nmse_db:.1f}",
        f"{mt.cosine:.8f}",
        f"{mt.max_abs:.3g}",
        verdict,
    ]


def _figure(p: PromptVerdict) -> str | None:
    """Heatmap (tensor x position, log10 of the error over the rounding floor, or of the NMSE
    over its band without a floor record) and the per-tensor curve, as a
    ``data:image/png;base64,...`` URL; None when no tensor has metrics."""
    rows = [t for t in p.tensors if t.metrics is not None and t.allowance is not None]
    if not rows:
        return None
    with _matplotlib_config():
        return _draw(p, rows)


@contextlib.contextmanager
def _matplotlib_config() -> Iterator[None]:
    """matplotlib's configuration and font cache in a temporary folder of this run (it would
    write them under the user's home), and its log quiet (it announces the font cache)."""
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    if "MPLCONFIGDIR" in os.environ:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="refgen-matplotlib-") as folder:
        os.environ["MPLCONFIGDIR"] = folder
        try:
            yield
        finally:
            del os.environ["MPLCONFIGDIR"]


def _draw(p: PromptVerdict, rows: list[TensorVerdict]) -> str:
    import matplotlib

    matplotlib.use("Agg")  # no display, no GUI toolkit
    from matplotlib.figure import Figure

    width = max((len(t.positions_ratio) for t in rows), default=0)
    fig = Figure(figsize=(11, 4.2 + 0.18 * len(rows)), dpi=100)
    heat_ax, curve_ax = fig.subplots(1, 2, width_ratios=[1.3, 1])
    factor = rows[0].allowance.factor if rows[0].allowance else 1.0
    floor = rows[0].allowance is not None and rows[0].allowance.kind == "floor"
    measure = "error / floor" if floor else "NMSE / band"
    if width:
        grid = np.full((len(rows), width), np.nan)
        for r, t in enumerate(rows):
            row = [_log_ratio(x) for x in t.positions_ratio or (t.ratio,)]
            grid[r, width - len(row) :] = row  # a last-position tensor sits at the last column
        image = heat_ax.imshow(grid, aspect="auto", cmap="magma", interpolation="nearest")
        bar = fig.colorbar(image, ax=heat_ax, label=f"log10({measure})")
        bar.ax.axhline(math.log10(factor), color="cyan", linewidth=1.5)  # the tolerance
        heat_ax.set_xlabel("position")
        heat_ax.set_yticks(range(len(rows)), [_short(t.name) for t in rows], fontsize=7)
        heat_ax.set_title(f"{measure} per tensor and position", fontsize=9)
        if p.first is not None and p.first in rows:
            heat_ax.axhline(rows.index(p.first), color="cyan", linewidth=1.2)
    ratios = [max(t.ratio, 1e-3) if not math.isnan(t.ratio) else np.nan for t in rows]
    x = list(range(len(rows)))
    curve_ax.semilogy(x, ratios, marker="o", color="#1f4e79", label=measure)
    curve_ax.axhline(factor, color="#b00020", linestyle="--", label=f"tolerance ({factor:g}x)")
    if floor:
        curve_ax.axhline(1.0, color="#888888", linestyle=":", label="the reference's own rounding")
    if p.first is not None and p.first in rows:
        i = rows.index(p.first)
        curve_ax.axvline(i, color="#b00020", alpha=0.4)
        curve_ax.annotate(
            "first divergence",
            (i, ratios[i]),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
            color="#b00020",
        )
    curve_ax.set_xticks(x, [_short(t.name) for t in rows], rotation=90, fontsize=7)
    curve_ax.set_title("per tensor, in forward order", fontsize=9)
    curve_ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _log_ratio(x: float) -> float:
    if math.isnan(x):
        return math.nan
    return math.log10(min(max(x, 1e-3), 1e12))


def _short(name: str) -> str:
    return name.replace("hidden_states.layer", "hs").replace("module.model.layers.", "L")
