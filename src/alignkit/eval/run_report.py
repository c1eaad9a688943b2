"""`alignkit report`: one self-contained HTML page for one or more run directories.

    alignkit report runs/dpo-a runs/dpo-b --out report.html
    alignkit report runs/demo          # the demo: metrics from runs/demo/dpo, evaluations from runs/demo/eval-*

For each run:
- a plot per group of metrics from metrics.jsonl (losses; accuracies; one per prefix such as `rewards/` or
  `logps/`; one per other metric; evaluation metrics in their own plots beside them), a metric in the same colour
  in every plot, restarts and gaps of the step sequence marked; then the first and last value of every metric and
  the resolved config;
- a table per kind of `summary.json` found one level below the run directory or beside it (`eval-before/`
  and `eval-after/` from `alignkit eval accuracy`, the demo's `eval-base/`, `eval-trained/` and `pairs/`):
  top-level numbers and strings and a `metrics` dict, one column per directory, a change column for two;
- samples: those directories' results.jsonl answers side by side, pairs.jsonl pairs, the run's samples.jsonl.
With several runs, their headline metrics are also overlaid, one plot per metric, a run in the same colour in
every plot. The page ends with the date it was written and the versions of alignkit, torch, transformers, Python.
"""

from __future__ import annotations

import json
from pathlib import Path

from alignkit import AlignkitError
from alignkit.eval import report as r

HEADLINE = ("loss", "eval_loss", "rewards/margins", "rewards/accuracies", "eval_rewards/accuracies", "reward",
            "score", "kl")
SAMPLES = 4


def _read_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a torn last line of a killed run
                    continue
            if limit is not None and len(rows) >= limit:
                break
    return rows


def find_metrics(run_dir: Path) -> Path | None:
    """run_dir/metrics.jsonl, or the first sub-directory's (the demo keeps its DPO run in dpo/)."""
    if (run_dir / "metrics.jsonl").is_file():
        return run_dir / "metrics.jsonl"
    return next(iter(sorted(run_dir.glob("*/metrics.jsonl"))), None)


def series(metrics: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """(step, value) points of every numeric metric, in first-seen order."""
    out: dict[str, list[tuple[float, float]]] = {}
    for row in metrics:
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) and "step" in row:
                out.setdefault(key, []).append((row["step"], value))
    return out


def group_of(key: str) -> tuple[int, str]:
    """(sort rank, plot title): losses together, accuracies together, rewards/* together, and so on."""
    name = key.removeprefix("eval_")
    if name.endswith("loss"):
        family, rank = "loss", 0
    elif "accurac" in name:
        family, rank = "accuracy", 1
    elif "/" in name:
        family, rank = name.split("/")[0], 2
    else:
        family, rank = name, 3
    return rank, ("eval " + family if key.startswith("eval_") else family)


def metric_groups(points: dict[str, list]) -> dict[str, list[str]]:
    """Plot title -> metric names, for the metrics with at least two points (one point draws no line)."""
    groups: dict[tuple[int, str], list[str]] = {}
    for key, pts in points.items():
        if len(pts) > 1:
            groups.setdefault(group_of(key), []).append(key)
    order = sorted(groups, key=lambda g: (g[0], g[1].removeprefix("eval ")))  # eval plots beside their twin
    return {title: groups[(rank, title)] for rank, title in order}


def plots_html(points: dict[str, list], marks: list[dict] | None = None) -> str:
    """One plot per group; legends drop what the title already says ("eval rewards": chosen, rejected). A
    series' colour follows its metric name (`report.series_color`); marks: `report.step_marks` of the rows."""
    out = []
    for title, keys in metric_groups(points).items():
        family = title.removeprefix("eval ")
        names = {}
        for key in keys:
            name = key.removeprefix("eval_")
            names[name.removeprefix(family + "/")] = points[key]
        out.append(r.svg_plot(title, names, marks=marks))
    return "".join(out)


def eval_dirs(run_dir: Path) -> list[Path]:
    """Directories holding a summary.json below the run directory or beside it; "before" ones first."""
    found = {p.parent.resolve() for base in (run_dir, run_dir.parent) for p in base.glob("*/summary.json")}
    found.discard(run_dir.resolve())

    def rank(p: Path) -> tuple[int, str]:
        name = p.name.lower()
        if any(w in name for w in ("before", "base")):
            return 0, name
        return (2 if any(w in name for w in ("after", "trained", "final")) else 1), name

    return sorted(found, key=rank)


def _summary_values(summary: dict) -> dict[str, object]:
    values = {k: v for k, v in summary.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    if isinstance(summary.get("metrics"), dict):
        values.update({k: v for k, v in summary["metrics"].items() if isinstance(v, (int, float, str))})
    return values


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def summary_tables(dirs: list[Path]) -> str:
    """One table per kind of summary (the same fields), a column per directory, a change column for two."""
    kinds: dict[frozenset, list[tuple[Path, dict]]] = {}
    for d in dirs:
        try:
            values = _summary_values(json.loads((d / "summary.json").read_text(encoding="utf-8")))
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
            continue
        kinds.setdefault(frozenset(values), []).append((d, values))
    tables = []
    for columns in kinds.values():
        compare = len(columns) == 2
        header = ["metric", *(d.name for d, _ in columns)] + (["change"] if compare else [])
        rows = []
        for key in columns[0][1]:
            row = [key, *(_fmt(values[key]) for _, values in columns)]
            if compare:
                a, b = (values[key] for _, values in columns)
                numbers = all(isinstance(v, (int, float)) for v in (a, b)) and key != "seconds"
                row.append(f"{b - a:+.4g}" if numbers else "")
            rows.append(row)
        tables.append(r.table(header, rows))
    return "".join(tables)


def _text(value) -> str:
    """A string, or the contents of a list of chat messages (or of one message)."""
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        return "\n".join(f"{m.get('role')}: {m.get('content')}" if len(value) > 1 else str(m.get("content"))
                         for m in value if isinstance(m, dict))
    return "" if value is None else str(value)


def _sample_html(row: dict, label: str) -> str:
    prompt = _text(row.get("question") or row.get("prompt"))
    text = _text(next((row[k] for k in ("response", "completion", "text", "output") if k in row), ""))
    mark = ""
    if isinstance(row.get("correct"), bool):
        mark = " <b class='ok'>right</b>" if row["correct"] else " <b class='bad'>wrong</b>"
    return f"<div><b>{r.html.escape(label)}</b>{mark}<br><i>{r.html.escape(prompt)}</i>{r.pre(text)}</div>"


def samples_html(run_dir: Path, dirs: list[Path]) -> str:
    """Evaluation answers side by side (the same questions), preference pairs, then the run's samples.jsonl."""
    parts = []
    shown = [(d, rows) for d in dirs if (rows := _read_jsonl(d / "results.jsonl", SAMPLES))]
    for i in range(max((len(rows) for _, rows in shown), default=0)):
        cells = "".join(_sample_html(rows[i], d.name) for d, rows in shown if i < len(rows))
        parts.append(f"<div class='pair'>{cells}</div>")
    for d in [run_dir, *dirs]:
        for row in _read_jsonl(d / "pairs.jsonl", SAMPLES):
            parts.append(f"<p><i>{r.html.escape(_text(row.get('prompt')))}</i> ({r.html.escape(d.name)}/pairs.jsonl)"
                         f"</p><div class='pair'><div><b class='ok'>chosen</b>{r.pre(_text(row.get('chosen')))}</div>"
                         f"<div><b class='bad'>rejected</b>{r.pre(_text(row.get('rejected')))}</div></div>")
    for row in _read_jsonl(run_dir / "samples.jsonl", SAMPLES):
        parts.append(_sample_html(row, "samples.jsonl"))
    return "".join(parts)


def run_section(run_dir: Path) -> tuple[str, dict[str, list]]:
    metrics_path = find_metrics(run_dir)
    metrics = _read_jsonl(metrics_path) if metrics_path else []
    points = series(metrics)
    config = (metrics_path.parent if metrics_path else run_dir) / "config.yaml"
    marks = r.step_marks(metrics, r.log_every(config))
    parts = []
    if metrics_path:
        breaks = "".join(f"; {m['kind']} at step {m['step']} (after step {m['after']})" for m in marks)
        parts.append(f"<p>{r.html.escape(str(metrics_path))}: {len(metrics)} rows{r.html.escape(breaks)}</p>"
                     f"<div class='plots'>{plots_html(points, marks)}</div>")
        parts.append(r.table(["metric", "first", "last", "at step"],
                             [[k, _fmt(p[0][1]), _fmt(p[-1][1]), p[-1][0]] for k, p in points.items()]))
    else:
        parts.append("<p>No metrics.jsonl.</p>")
    parts.append(r.config_block(config))
    dirs = eval_dirs(run_dir)
    tables = summary_tables(dirs)
    if tables:
        parts.append("<h3>Evaluations and other summaries</h3>" + tables)
    samples = samples_html(run_dir, dirs)
    if samples:
        parts.append("<h3>Samples</h3>" + samples)
    return "".join(parts), points


def _names(run_dirs: list[Path]) -> list[str]:
    names = [d.resolve().name for d in run_dirs]
    return [f"{d.resolve().parent.name}/{n}" if names.count(n) > 1 else n for d, n in zip(run_dirs, names)]


def build(run_dirs: list[str]) -> str:
    dirs = [Path(d) for d in run_dirs]
    for d in dirs:
        if not d.is_dir():
            raise AlignkitError(f"{d}: no such run directory")
    names = _names(dirs)
    sections, all_points = [], {}
    for name, d in zip(names, dirs):
        html_text, all_points[name] = run_section(d)
        sections.append((name, html_text))
    if len(dirs) > 1:  # one colour per run, in the order they were named, in every plot of the page
        colors = r.run_colors(names)
        plots = "".join(r.svg_plot(key, {name: pts[key] for name, pts in all_points.items()
                                         if len(pts.get(key, [])) > 1}, colors=colors) for key in HEADLINE)
        if plots:
            sections.insert(0, ("Runs compared", f"<div class='plots'>{plots}</div>"))
    sections.append(("About this report", r.provenance()))
    return r.page("alignkit report: " + ", ".join(names), sections)


def write(run_dirs: list[str], out: str) -> Path:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(build(run_dirs), encoding="utf-8")
    return path
