"""`alignkit eval compare`: two evaluation summaries side by side, with regressions flagged.

    alignkit eval compare runs/base/summary.json runs/dpo/summary.json --threshold 0.02 --fail-on-regression

Reads the `metrics` dict of any `alignkit eval` summary.json (or, for summaries without one, such as
`eval accuracy`'s, its top-level numbers) and prints each metric for A (before) and B (after) with the delta.
Each metric name says which way is better: lower for perplexity, NLL, bits per byte, over-refusal, spread (std),
unparseable and unfinished counts; higher for accuracy, pass@k, maj@k, win rate, rating, agreement and refusal
rate on harmful prompts. Counts, timings and interval bounds are shown but never flagged. A change for the worse
is a regression when it exceeds the threshold: in absolute terms for metrics between 0 and 1 (rates,
accuracies), relative to A's value otherwise (a perplexity up by more than 2% at 0.02).
`--fail-on-regression` makes the command exit with status 1 when one is flagged.
"""

from __future__ import annotations

import json

from alignkit import AlignkitError

LOWER_BETTER = ("perplexity", "over_refusal", "nll", "bits_per_byte", "loss", "std", "unparseable", "unfinished",
                "position_flips")
HIGHER_BETTER = ("accuracy", "pass@", "maj@", "win_rate", "rating", "agreement", "unanimous", "refusal_rate")
NEUTRAL_SUFFIXES = ("_low", "_high")


def direction(name: str) -> int:
    """-1 when lower is better, +1 when higher is better, 0 when the metric is not a quality measure."""
    if name.endswith(NEUTRAL_SUFFIXES):
        return 0
    if any(key in name for key in LOWER_BETTER):
        return -1
    if any(key in name for key in HIGHER_BETTER):
        return 1
    return 0


def load_metrics(path: str) -> dict[str, float]:
    from alignkit.data.files import read_text

    try:
        summary = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise AlignkitError(f"{path}: malformed JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(summary, dict):
        raise AlignkitError(f"{path}: expected a JSON object (an alignkit eval summary.json)")
    source = summary.get("metrics", summary)
    if not isinstance(source, dict):
        raise AlignkitError(f"{path}: field 'metrics': expected an object")
    return {k: float(v) for k, v in source.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def compare(a: dict[str, float], b: dict[str, float], threshold: float) -> list[dict]:
    """One row per metric in either summary: values, delta (B − A), and the verdict."""
    rows = []
    for name in list(a) + [k for k in b if k not in a]:
        va, vb, way = a.get(name), b.get(name), direction(name)
        row = {"metric": name, "a": va, "b": vb, "delta": None, "status": ""}
        if va is not None and vb is not None:
            row["delta"] = vb - va
            bounded = 0 <= va <= 1 and 0 <= vb <= 1
            change = row["delta"] if bounded or va == 0 else row["delta"] / abs(va)  # relative for unbounded metrics
            worse = -way * change  # > 0 when B is worse than A
            if way and worse > threshold:
                row["status"] = "REGRESSION"
            elif way and worse < -threshold:
                row["status"] = "better"
        rows.append(row)
    return rows


def format_table(rows: list[dict], name_a: str, name_b: str) -> str:
    def num(x):
        return "-" if x is None else f"{x:.4g}"

    lines = [f"A: {name_a}", f"B: {name_b}", f"{'metric':<28} {'A':>10} {'B':>10} {'B - A':>10}  "]
    for r in rows:
        delta = "-" if r["delta"] is None else f"{r['delta']:+.4g}"
        lines.append(f"{r['metric']:<28} {num(r['a']):>10} {num(r['b']):>10} {delta:>10}  {r['status']}")
    flagged = sum(r["status"] == "REGRESSION" for r in rows)
    lines.append(f"{flagged} regression(s)")
    return "\n".join(lines)
