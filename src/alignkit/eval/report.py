"""Self-contained HTML reports: metric plots as inline SVG, tables, sample texts. No plotting library needed."""

from __future__ import annotations

import html
import json
from pathlib import Path

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def svg_plot(title: str, series: dict[str, list[tuple[float, float]]], width: int = 420, height: int = 240) -> str:
    """A line plot of named (x, y) series as an <svg> element (empty series are left out)."""
    series = {name: pts for name, pts in series.items() if pts}
    if not series:
        return ""
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 1, y1 + 1
    left, right, top, bottom = 52, 12, 26, 30

    def px(x):
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def py(y):
        return top + (y1 - y) / (y1 - y0) * (height - top - bottom)

    parts = [f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{html.escape(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
             f'fill="none" stroke="#ccc"/>']
    for frac in (0, 0.5, 1):
        y = y0 + frac * (y1 - y0)
        parts.append(f'<text x="{left - 4}" y="{py(y) + 4:.1f}" text-anchor="end" font-size="10">{y:.3g}</text>')
        x = x0 + frac * (x1 - x0)
        parts.append(f'<text x="{px(x):.1f}" y="{height - 14}" text-anchor="middle" font-size="10">{x:.4g}</text>')
    for i, (name, pts) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        parts.append(f'<polyline class="series" data-name="{html.escape(name)}" data-points="{len(pts)}" '
                     f'fill="none" stroke="{color}" stroke-width="1.6" points="{path}"/>')
        parts.append(f'<text x="{left + 6 + 110 * i}" y="{height - 2}" font-size="10" fill="{color}">'
                     f'{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def metric_plots(metrics: list[dict], groups: dict[str, list[str]]) -> str:
    """One plot per group of metric names found in a metrics.jsonl (training rows and, if any, eval rows)."""
    out = []
    for title, names in groups.items():
        series = {}
        for name in names:
            pts = [(row["step"], row[name]) for row in metrics if isinstance(row.get(name), (int, float))]
            series[name] = pts
        out.append(svg_plot(title, series))
    return "".join(p for p in out if p)


def table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def pre(text: str) -> str:
    return f"<pre>{html.escape(text)}</pre>"


STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ddd;padding:4px 10px;text-align:left}
th{background:#f4f4f4}pre{background:#f7f7f7;padding:8px;white-space:pre-wrap;margin:2px 0}
.plots{display:flex;flex-wrap:wrap;gap:12px}.pair{display:grid;grid-template-columns:1fr 1fr;gap:10px;margin-bottom:1.2em}
h3{margin-bottom:.2em}.ok{color:#2ca02c}.bad{color:#d62728}
"""


def page(title: str, sections: list[tuple[str, str]]) -> str:
    body = "".join(f"<section><h2>{html.escape(h)}</h2>{content}</section>" for h, content in sections)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")
