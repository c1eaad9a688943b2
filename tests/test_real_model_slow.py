"""The shipped DPO job on SmolLM2-135M-Instruct (minutes on a CPU): `pytest -m slow`."""

import json
import time

import pytest

from alignkit.cli import main
from conftest import ROOT

pytestmark = pytest.mark.slow


def test_shipped_config_learns_and_generalises(tmp_path):
    run = tmp_path / "run"
    t0 = time.time()
    main(["dpo", "--config", str(ROOT / "configs/dpo/smollm2-arith.yaml"), f"train.output_dir={run}",
          f"reference.cache_dir={tmp_path / 'cache'}"])
    minutes = (time.time() - t0) / 60
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = rows[-10:]
    accuracy = sum(r["rewards/accuracies"] for r in last) / len(last)
    margins = [r["rewards/margins"] for r in last]
    print(f"{minutes:.1f} min; last-10 accuracy {accuracy:.3f}; margins {margins[0]:.3f} -> {margins[-1]:.3f}")
    assert accuracy >= 0.9
    assert sum(margins[5:]) > sum(margins[:5])  # rising over the last 10 logged steps

    held = ROOT / "data/arith/heldout.jsonl"
    counts = {}
    for name, model in (("base", "smollm2-135m-instruct"), ("trained", str(run / "final"))):
        out = tmp_path / f"{name}.jsonl"
        main(["logps", "--model", model, "--data", str(held), "--out", str(out)])
        results = [json.loads(line) for line in out.read_text().splitlines()]
        counts[name] = sum(r["chosen_logp"] > r["rejected_logp"] for r in results)
    print(f"held-out pairs where chosen is preferred: base {counts['base']}, trained {counts['trained']}")
    assert counts["trained"] > counts["base"]
