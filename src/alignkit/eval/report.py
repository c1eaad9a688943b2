"""Self-contained HTML reports: metric plots as inline SVG, tables, sample texts. No plotting library needed.

Plots (`svg_plot`): 4-6 ticks per axis at round values (1, 2, 2.5 or 5 x 10^k; the step axis at integers only),
labels to the precision the tick spacing needs, axis titles, a title, and a legend wrapped below the plot inside
the SVG (long names shortened, the full name in a tooltip). A series' colour depends on its name alone
(`series_color`), so a metric looks the same in every plot and on every page; a page comparing runs passes one
colour per run instead. Where the step sequence of a metrics.jsonl restarts (a step not above the one before it)
or jumps by more than the run's `train.log_every`, a dashed vertical line marks the spot (`step_marks`).
"""

from __future__ import annotations

import datetime
import html
import json
import math
import platform
import zlib
from pathlib import Path

# Tableau 10: distinct hues that stay readable on white.
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]
COLORS = PALETTE  # the name older code used
# Metrics that share a plot get fixed, distinct colours (chosen green, rejected red in every plot); any other name
# gets a palette colour picked by a hash of the name, which does not change between plots, pages or runs.
FIXED_COLORS = {
    "loss": "#1f77b4", "nll_loss": "#ff7f0e", "policy_loss": "#9467bd", "value_loss": "#8c564b",
    "chosen": "#2ca02c", "rejected": "#d62728", "margins": "#1f77b4", "accuracies": "#9467bd",
    "accuracy": "#17becf", "logp_diff_mean": "#1f77b4", "logp_diff_max": "#ff7f0e",
}
# Series of one plot that got the same colour (a hash collision, or more runs than colours) differ in dashes.
DASHES = ["", "6 3", "2 2", "8 3 2 3", "1 3"]
FONT = 10  # px, tick labels and legend
CHAR_W = 6.5  # px per character at FONT: a generous average, used to lay out labels and the legend
MAX_GAPS = 3  # more jumps than this in one file are taken for a changed train.log_every, not missing rows
LEGEND_CHARS = 30  # longer series names are shortened in the legend (the full name is its tooltip)


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl (a torn last line of a killed run is skipped)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------------------------------------------- axes


def nice_ticks(lo: float, hi: float, integer: bool = False) -> list[float]:
    """4 to 6 evenly spaced ticks at multiples of 1, 2, 2.5 or 5 x 10^k that cover [lo, hi]; the first and last
    tick are the axis limits. `integer`: whole-number ticks only (a step axis). A zero range is padded: +-10% of
    the value (+-1 around 0), or to four whole numbers on an integer axis."""
    lo, hi = min(lo, hi), max(lo, hi)
    if integer:
        lo, hi = math.floor(lo), math.ceil(hi)
        floor_ = 0 if lo >= 0 else -math.inf  # steps start at 0: do not pad below it
        while hi - lo < 3:  # a span of 3 gives 4 whole-number ticks: one below, one above, ...
            if (hi - lo) % 2 == 0 and lo - 1 >= floor_:
                lo -= 1
            else:
                hi += 1
    elif hi - lo <= max(abs(lo), abs(hi)) * 1e-7:  # one value (to 7 digits): a range of +-10% around it
        lo = hi = (lo + hi) / 2
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    span = hi - lo
    magnitude = math.floor(math.log10(span))
    best = None
    for exp in range(magnitude - 2, magnitude + 2):
        for mantissa in (1, 2, 2.5, 5):
            step = mantissa * 10.0 ** exp
            if integer and (step < 1 or step != int(step)):
                continue
            start = math.floor(lo / step + 1e-9)
            end = math.ceil(hi / step - 1e-9)
            n = end - start + 1
            coverage = span / ((end - start) * step)
            score = (not 4 <= n <= 6, -round(coverage, 2), mantissa == 2.5, abs(n - 5))
            if best is None or score < best[0]:
                best = (score, step, start, n)
    _, step, start, n = best
    while n < 4:  # no spacing fits (a whole-number axis such as 15-25): one more tick above, then below
        if n % 2 == 0 and (start - 1) * step >= min(lo, 0):
            start -= 1
        n += 1
    decimals = _decimals(step)
    ticks = [round((start + i) * step, decimals + 2) for i in range(n)]
    return [int(t) if integer else t for t in ticks]


def _decimals(step: float) -> int:
    d = 0
    while d < 15 and abs(round(step, d) - step) > abs(step) * 1e-6:
        d += 1
    return d


def tick_labels(ticks: list[float]) -> list[str]:
    """Labels to the precision the spacing needs, all distinct: 0.1 0.2 0.3, 2.5 5.0 7.5, 1e-7 2e-7 (scientific
    notation where fixed decimals would be longer than 7 characters and longer than it)."""
    if len(ticks) < 2:
        return [f"{t:g}" for t in ticks]
    step = min(abs(b - a) for a, b in zip(ticks, ticks[1:])) or 1.0
    decimals = _decimals(step)
    fixed = [f"{0.0 if abs(t) < step * 1e-9 else t:.{decimals}f}" for t in ticks]
    if max(map(len, fixed)) <= 7:
        return fixed
    for precision in range(0, 17):  # the fewest digits that give every tick back
        sci = [_sci(t, precision, step) for t in ticks]
        if all(abs(float(label) - t) <= step * 1e-6 for label, t in zip(sci, ticks)):
            break
    return sci if max(map(len, sci)) < max(map(len, fixed)) else fixed


def _sci(value: float, precision: int, step: float) -> str:
    if abs(value) < step * 1e-9:
        return "0"
    mantissa, exponent = f"{value:.{precision}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


# ---------------------------------------------------------------------------------------------------- colours


def color_key(name: str) -> str:
    """What a series' colour depends on: its last path part without `eval_`, so loss and eval_loss, and
    rewards/chosen, logps/chosen and eval_rewards/chosen, share a colour."""
    return name.removeprefix("eval_").split("/")[-1].removeprefix("eval_")


def series_color(name: str) -> str:
    """The colour of a metric named `name`, the same in every plot and on every page."""
    key = color_key(name)
    if key in FIXED_COLORS:
        return FIXED_COLORS[key]
    return PALETTE[zlib.crc32(key.encode("utf-8")) % len(PALETTE)]


def run_colors(names: list[str]) -> dict[str, str]:
    """One colour per run of a page comparing runs, in the order the runs were named."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


# ---------------------------------------------------------------------------------------------------- restarts


def log_every(config: Path) -> int | None:
    """train.log_every of a run's resolved config.yaml (None when there is none)."""
    try:
        import yaml

        value = yaml.safe_load(config.read_text(encoding="utf-8"))["train"]["log_every"]
    except Exception:  # no file, not YAML, another layout: gap marks are then left out
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def step_marks(metrics: list[dict], every: int | None = None) -> list[dict]:
    """Where the step sequence of a metrics.jsonl (rows in file order) breaks: a `restart` where a row's step
    is not above the previous row's (rows appended by a run that started again), a `gap` where it rises by more
    than `every` (train.log_every; gaps are not looked for without it, nor kept when there are more than
    MAX_GAPS of them, as when a resume lowered log_every). Each mark: kind, step (the first step
    after the break), after (the step before it).

    A resume from a checkpoint by alignkit itself leaves no trace here: it drops the rows logged after the
    checkpoint and goes on logging at the next step, so the file holds one seamless trajectory."""
    marks, previous = [], None
    for row in metrics:
        step = row.get("step") if isinstance(row, dict) else None
        if not _number(step):
            continue
        if previous is not None:
            if step <= previous:
                marks.append({"kind": "restart", "step": step, "after": previous})
            elif every and step - previous > every:
                marks.append({"kind": "gap", "step": step, "after": previous})
        previous = step
    if sum(m["kind"] == "gap" for m in marks) > MAX_GAPS:  # train.log_every was lowered on a resume, most likely:
        marks = [m for m in marks if m["kind"] != "gap"]  # the older rows are sparser, not missing
    return marks


def _segments(pts: list[tuple[float, float]], marks: list[dict]) -> list[list[tuple[float, float]]]:
    """A series cut where its steps stop rising and across every gap mark: no line through missing rows."""
    gaps = [(m["after"], m["step"]) for m in marks if m["kind"] == "gap"]
    out: list[list[tuple[float, float]]] = []
    for x, y in pts:
        if not out or x <= out[-1][-1][0] or any(out[-1][-1][0] <= a and x >= b for a, b in gaps):
            out.append([])
        out[-1].append((x, y))
    return out


# ---------------------------------------------------------------------------------------------------- the plot


def _short(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[:chars - 1] + "\u2026"


def _f(v: float) -> str:
    return f"{v:.1f}"


def svg_plot(title: str, series: dict[str, list[tuple[float, float]]], width: int = 420, height: int = 240, *,
             colors: dict[str, str] | None = None, x_label: str = "step", y_label: str | None = None,
             marks: list[dict] | None = None) -> str:
    """A line plot of named (step, value) series as an <svg> element (empty series are left out).

    height is that of the plot and its axes; a legend wrapped below it makes the SVG taller. colors: name ->
    colour (a page comparing runs); otherwise `series_color`. y_label defaults to the title. marks: `step_marks`
    of the rows the points come from."""
    series = {name: [(x, y) for x, y in pts if _number(x) and _number(y)] for name, pts in series.items()}
    series = {name: pts for name, pts in series.items() if pts}
    if not series:
        return ""
    marks = [m for m in marks or [] if _number(m.get("step"))]
    xs = [x for pts in series.values() for x, _ in pts] + [m["step"] for m in marks]
    ys = [y for pts in series.values() for _, y in pts]
    integer_x = all(float(x).is_integer() for x in xs)
    xt = nice_ticks(min(xs), max(xs), integer=integer_x)
    yt = nice_ticks(min(ys), max(ys))
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]
    xl, yl = tick_labels(xt), tick_labels(yt)
    y_label = title if y_label is None else y_label

    left = 22 + max(len(s) for s in yl) * CHAR_W + 6
    right = max(14, len(xl[-1]) * CHAR_W / 2 + 4)
    top, axis_h = 28, 36  # title; x tick labels and the x axis title below the plot
    plot_w, plot_h = width - left - right, height - top - axis_h

    def px(x):
        return left + (x - x0) / (x1 - x0) * plot_w

    def py(y):
        return top + (y1 - y) / (y1 - y0) * plot_h

    # legend: items wrapped into rows below the x axis title, every one inside the SVG
    items, row, x, legend_w = [], 0, left, width - 8
    for name in series:
        label = _short(name, LEGEND_CHARS)
        w = 20 + len(label) * CHAR_W
        if x > left and x + w > legend_w:
            row, x = row + 1, left
        if x + w > legend_w:  # a name too long even for a row of its own: start the row further left
            x = max(8, legend_w - w)
        items.append((name, label, x, row))
        x += w + 12
    legend_top = height + 4
    total_h = legend_top + (row + 1) * 15 + 2

    esc = html.escape
    parts = [f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{total_h:.0f}" '
             f'viewBox="0 0 {width} {total_h:.0f}" role="img" aria-label="{esc(title)}">',
             f'<title>{esc(title)}</title>',
             f'<text class="title" x="{width / 2}" y="17" text-anchor="middle" font-size="13">'
             f'{esc(_short(title, int(width / 7.5)))}</text>',
             f'<rect x="{_f(left)}" y="{top}" width="{_f(plot_w)}" height="{plot_h}" fill="none" stroke="#bbb"/>']
    for t, label in zip(yt, yl):
        y = py(t)
        parts.append(f'<line x1="{_f(left)}" x2="{_f(left + plot_w)}" y1="{_f(y)}" y2="{_f(y)}" stroke="#eee"/>'
                     f'<text class="ytick" x="{_f(left - 5)}" y="{_f(y + 3.5)}" text-anchor="end" '
                     f'font-size="{FONT}">{label}</text>')
    for t, label in zip(xt, xl):
        x = px(t)
        parts.append(f'<line x1="{_f(x)}" x2="{_f(x)}" y1="{top}" y2="{top + plot_h}" stroke="#eee"/>'
                     f'<text class="xtick" x="{_f(x)}" y="{top + plot_h + 13}" text-anchor="middle" '
                     f'font-size="{FONT}">{label}</text>')
    parts.append(f'<text class="xlabel" x="{_f(left + plot_w / 2)}" y="{top + plot_h + 29}" text-anchor="middle" '
                 f'font-size="11">{esc(x_label)}</text>')
    parts.append(f'<text class="ylabel" x="12" y="{_f(top + plot_h / 2)}" text-anchor="middle" font-size="11" '
                 f'transform="rotate(-90 12 {_f(top + plot_h / 2)})">{esc(_short(y_label, int(plot_h / 6.5)))}'
                 f'</text>')
    for m in marks:
        x = px(m["step"])
        what = (f"the step sequence restarts: step {m['step']} follows step {m['after']} (a run started again)"
                if m["kind"] == "restart" else f"no rows between step {m['after']} and step {m['step']}")
        anchor, dx = ("end", -3) if x > left + plot_w * 0.7 else ("start", 3)
        parts.append(f'<g class="mark {m["kind"]}"><title>{esc(what)}</title>'
                     f'<line x1="{_f(x)}" x2="{_f(x)}" y1="{top}" y2="{top + plot_h}" stroke="#555" '
                     f'stroke-dasharray="4 3"/><text x="{_f(x + dx)}" y="{top + 10}" text-anchor="{anchor}" '
                     f'font-size="9" fill="#555">{m["kind"]}</text></g>')
    used: dict[str, int] = {}
    for (name, label, lx, lrow) in items:
        pts = series[name]
        color = (colors or {}).get(name) or series_color(name)
        dash = DASHES[used.get(color, 0) % len(DASHES)]
        used[color] = used.get(color, 0) + 1
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        for seg in _segments(pts, marks):
            if len(seg) == 1:
                parts.append(f'<circle class="series-point" data-name="{esc(name)}" cx="{_f(px(seg[0][0]))}" '
                             f'cy="{_f(py(seg[0][1]))}" r="2" fill="{color}"/>')
                continue
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in seg)
            parts.append(f'<polyline class="series" data-name="{esc(name)}" data-points="{len(seg)}" '
                         f'fill="none" stroke="{color}" stroke-width="1.6"{dash_attr} points="{path}"/>')
        ly = legend_top + lrow * 15 + 10
        parts.append(f'<g class="legend-item"><title>{esc(name)}</title>'
                     f'<line x1="{_f(lx)}" x2="{_f(lx + 16)}" y1="{ly - 3.5}" y2="{ly - 3.5}" stroke="{color}" '
                     f'stroke-width="2"{dash_attr}/><text class="legend" x="{_f(lx + 20)}" y="{ly}" '
                     f'font-size="{FONT}" fill="#222">{esc(label)}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def metric_plots(metrics: list[dict], groups: dict[str, list[str]], every: int | None = None) -> str:
    """One plot per group of metric names found in a metrics.jsonl (training rows and, if any, eval rows);
    `every`: the run's train.log_every, to mark gaps in the step sequence (restarts are marked regardless)."""
    marks = step_marks(metrics, every)
    out = []
    for title, names in groups.items():
        series = {}
        for name in names:
            series[name] = [(row["step"], row[name]) for row in metrics if _number(row.get(name))
                            and _number(row.get("step"))]
        out.append(svg_plot(title, series, marks=marks))
    return "".join(p for p in out if p)


# ---------------------------------------------------------------------------------------------------- page parts


def table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def pre(text: str) -> str:
    return f"<pre>{html.escape(text)}</pre>"


def details(summary: str, content: str) -> str:
    """A collapsed block (a config file, say)."""
    return f"<details><summary>{html.escape(summary)}</summary>{content}</details>"


def config_block(path: Path) -> str:
    """A run's resolved config.yaml, collapsed ("" when there is none)."""
    if not path.is_file():
        return ""
    return details(f"{path.name} ({path})", pre(path.read_text(encoding="utf-8")))


def pairs_built(pairs_dir: Path) -> int | None:
    """The number of pairs in a `pairs build` directory: its summary.json, or else the rows of pairs.jsonl."""
    try:
        pairs = json.loads((pairs_dir / "summary.json").read_text(encoding="utf-8")).get("pairs")
        if isinstance(pairs, int) and not isinstance(pairs, bool):
            return pairs
    except (OSError, ValueError, AttributeError):
        pass
    path = pairs_dir / "pairs.jsonl"
    if not path.is_file():
        return None
    from alignkit.data.jsonl import count_records

    return count_records(path)


def versions() -> dict[str, str]:
    """The versions of alignkit, torch, transformers and Python that wrote the report."""
    from importlib import metadata

    import alignkit

    out = {"alignkit": alignkit.__version__}
    for package in ("torch", "transformers"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    out["python"] = platform.python_version()
    return out


def provenance() -> str:
    """When the report was written, and with what."""
    written = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    rows = [["written", written], *([f"{name} version", v] for name, v in versions().items())]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table class='provenance'><tbody>{body}</tbody></table>"


STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ddd;padding:4px 10px;text-align:left}
th{background:#f4f4f4}pre{background:#f7f7f7;padding:8px;white-space:pre-wrap;margin:2px 0}
.plots{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:10px;margin-bottom:1.2em}
h3{margin-bottom:.2em}.ok{color:#2ca02c}.bad{color:#d62728}svg.plot text{font-family:system-ui,sans-serif}
"""


def page(title: str, sections: list[tuple[str, str]]) -> str:
    body = "".join(f"<section><h2>{html.escape(h)}</h2>{content}</section>" for h, content in sections)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")
