"""`alignkit eval stability` on the tiny model: agreement with the majority and accuracy per pass."""

import json

import pytest

from alignkit.cli import main


def test_stability_structure(tiny_model, tmp_path):
    out = tmp_path / "stab"
    main(["eval", "stability", "--model", str(tiny_model), "--task", "addition-2d", "--limit", "3", "--samples", "4",
          "--temperature", "1.0", "--max-new-tokens", "6", "--out", str(out)])
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    metrics, per_pass = summary["metrics"], summary["accuracy_per_pass"]
    assert len(rows) == metrics["items"] == 3 and len(per_pass) == metrics["samples"] == 4
    for r in rows:
        assert len(r["extracted"]) == len(r["correct"]) == 4
        assert 0 <= r["agreement"] <= 1
        top = r["majority"]  # recomputed from the row: share of samples giving the majority answer
        assert r["agreement"] == (0.0 if top is None else r["extracted"].count(top) / 4)
    assert metrics["mean_agreement"] == pytest.approx(sum(r["agreement"] for r in rows) / 3)
    assert per_pass == [sum(r["correct"][j] for r in rows) / 3 for j in range(4)]
    assert metrics["accuracy_min"] <= metrics["accuracy_mean"] <= metrics["accuracy_max"]
    assert metrics["accuracy_std"] >= 0


def test_same_seed_same_samples(tiny_model, tmp_path):
    """Sampling is seeded per question and sample: a rerun gives the same answers."""
    runs = []
    for name in ("a", "b"):
        main(["eval", "stability", "--model", str(tiny_model), "--task", "addition-2d", "--limit", "2", "--samples",
              "2", "--max-new-tokens", "4", "--seed", "5", "--out", str(tmp_path / name)])
        runs.append((tmp_path / name / "results.jsonl").read_text())
    assert runs[0] == runs[1]
