"""`alignkit sxs export`: win rates and DPO preference pairs from the side-by-side labels.

    alignkit sxs export --db labels.sqlite --pairs sxs.jsonl --out runs/sxs

Writes to --out:
- `sxs_report.json` and `sxs_report.md`: per pair of models, wins / losses / ties / both-bad and the win rate
  (a win counts 1, a tie or both-bad ½) with a 95% bootstrap interval that resamples items, not labels.
- `dpo_pairs.jsonl`: conversational rows (`prompt` messages, `chosen` / `rejected` assistant messages, and
  `metadata`) that `alignkit dpo` trains on. One row per item the A/B-better labels agree on (the majority);
  ties, both-bad and evenly split items give no row and are counted.
Labels whose item is no longer in the items file, or whose item changed since it was labelled, are skipped
and counted. Labels an annotator undid are not in the labels table any more (see store.py): they count nowhere,
and the report says how many there were.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

from alignkit import AlignkitError
from alignkit.eval.metrics import bootstrap_interval, win_rate
from alignkit.sxs.items import load_items
from alignkit.sxs.store import LabelStore


# A label's score from one model's point of view: the mean is its win rate, and the bootstrap resamples these.
SCORES = {"win": 1.0, "tie": 0.5, "both_bad": 0.5, "loss": 0.0}


def _outcome(label: dict, model: str) -> str:
    """The label from `model`'s point of view: win, loss, tie or both_bad."""
    if label["winner"] is None:
        return label["choice"]
    return "win" if label["winner"] == model else "loss"


def comparisons(labels: list[dict], n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """One entry per pair of models (names in sorted order), from the first model's point of view."""
    by_models: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for label in labels:
        by_models[tuple(sorted((label["model_a"], label["model_b"])))].append(label)
    out = []
    for (model, opponent), group in sorted(by_models.items()):
        outcomes = [_outcome(label, model) for label in group]
        scores = [SCORES[o] for o in outcomes]
        counts = Counter(outcomes)
        low, high = bootstrap_interval(scores, n_boot, seed=seed, groups=[label["pair_id"] for label in group])
        out.append({"model": model, "opponent": opponent, "labels": len(group), "items": len({
            label["pair_id"] for label in group}), "wins": counts["win"], "losses": counts["loss"],
            "ties": counts["tie"], "both_bad": counts["both_bad"], "win_rate": round(win_rate(counts["win"], counts["tie"] + counts["both_bad"], counts["loss"]), 4),
            "ci95": [round(low, 4), round(high, 4)]})
    return out


def dpo_rows(labels: list[dict], items: dict) -> tuple[list[dict], dict]:
    """Conversational preference rows (the majority of A/B-better labels per item) and what was left out."""
    votes: dict[str, Counter] = defaultdict(Counter)
    comments: dict[str, list[str]] = defaultdict(list)
    excluded = Counter()
    for label in labels:
        if label["choice"] in ("tie", "both_bad"):
            excluded[label["choice"]] += 1
            continue
        votes[label["pair_id"]][label["choice"]] += 1
        if label["comment"]:
            comments[label["pair_id"]].append(label["comment"])
    rows = []
    for pair_id, count in votes.items():
        if count["a"] == count["b"]:
            excluded["split"] += 1
            continue
        item = items[pair_id]
        a_wins = count["a"] > count["b"]
        chosen, rejected = (item.answer_a, item.answer_b) if a_wins else (item.answer_b, item.answer_a)
        if not chosen.strip() or not rejected.strip() or chosen == rejected:
            excluded["unusable"] += 1  # DPO needs two different, non-empty answers
            continue
        rows.append({
            "prompt": item.prompt, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "metadata": {"pair_id": pair_id, "chosen_model": item.model_a if a_wins else item.model_b,
                         "rejected_model": item.model_b if a_wins else item.model_a,
                         "votes": {"chosen": max(count["a"], count["b"]), "rejected": min(count["a"], count["b"])},
                         "comments": comments[pair_id]},
        })
    return rows, {"tie": excluded["tie"], "both_bad": excluded["both_bad"], "split": excluded["split"],
                  "unusable": excluded["unusable"]}


def markdown(report: dict) -> str:
    lines = ["| model | opponent | labels | wins | losses | ties | both bad | win rate | 95% interval |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for c in report["comparisons"]:
        lines.append(f"| {c['model']} | {c['opponent']} | {c['labels']} | {c['wins']} | {c['losses']} | {c['ties']} "
                     f"| {c['both_bad']} | {c['win_rate']:.1%} | {c['ci95'][0]:.1%} – {c['ci95'][1]:.1%} |")
    d = report["dpo"]
    lines += ["", "Win rate: wins count 1, ties and both-bad ½; the interval resamples items (bootstrap, "
                  f"{report['bootstrap']} resamples).", "",
              f"{report['labels']} labels from {len(report['annotators'])} annotator(s). DPO pairs: {d['rows']} rows "
              f"in {d['file']} (left out: {d['excluded']['tie']} tie and {d['excluded']['both_bad']} both-bad "
              f"labels, {d['excluded']['split']} evenly split and {d['excluded']['unusable']} unusable items)."]
    skipped = report["skipped_labels"]
    if any(skipped.values()):
        lines.append(f"Skipped labels: {skipped['unknown_item']} of items not in the items file, "
                     f"{skipped['changed_item']} of items changed since they were labelled.")
    if report["undone_labels"]:
        lines.append(f"Undone by their annotators, and not counted: {report['undone_labels']} label(s).")
    return "\n".join(lines) + "\n"


def run(db: str, pairs: str, out: str, n_boot: int = 2000, seed: int = 0) -> dict:
    if not Path(db).is_file():
        raise AlignkitError(f"{db}: no such labels database")
    items = load_items(pairs)
    store = LabelStore(db)
    labels, skipped = [], Counter()
    for label in store.all():  # undone labels are not among them
        item = items.get(label["pair_id"])
        if item is None:
            skipped["unknown_item"] += 1
        elif label["pair_digest"] != item.digest:
            skipped["changed_item"] += 1
        else:
            labels.append(label)
    if not labels:
        raise AlignkitError(f"{db}: no labels of the items in {pairs}")
    rows, excluded = dpo_rows(labels, items)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "dpo_pairs.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    report = {"labels": len(labels), "annotators": dict(Counter(label["annotator"] for label in labels)),
              "bootstrap": n_boot, "comparisons": comparisons(labels, n_boot, seed),
              "dpo": {"rows": len(rows), "file": "dpo_pairs.jsonl", "excluded": excluded},
              "skipped_labels": {"unknown_item": skipped["unknown_item"], "changed_item": skipped["changed_item"]},
              "undone_labels": store.undone()}
    (out_dir / "sxs_report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    (out_dir / "sxs_report.md").write_text(markdown(report), encoding="utf-8")
    return report
