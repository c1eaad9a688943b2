"""`alignkit demo` end to end on a tiny model: every stage runs, the report has its plots, a rerun resumes."""

import json
import re

from alignkit.cli import main


def test_demo_runs_every_stage_and_writes_the_report(tiny_model, tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--model", str(tiny_model), "--questions", "16", "--heldout", "8"]
    main(args)
    printed = capsys.readouterr().out
    assert "held-out accuracy" in printed and "report" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["heldout_questions"] == 8 and summary["pairs"] == 16
    assert set(summary["seconds"]) == {"evaluate base", "build pairs", "train dpo", "evaluate trained"}
    for stage in ("eval-base", "eval-trained"):
        rows = [json.loads(line) for line in (out / stage / "results.jsonl").read_text().splitlines()]
        assert len(rows) == 8 and all({"question", "response", "correct"} <= set(r) for r in rows)
    assert (out / "dpo" / "final" / "config.json").exists()
    html = (out / "report.html").read_text()
    plots = re.findall(r'<svg class="plot".*?</svg>', html)
    assert len(plots) == 4
    for plot in plots:  # every plot has at least one line with the two logged steps
        assert re.search(r'data-points="2"', plot)
    assert html.count("class='pair'") >= 5 + 8  # sample pairs and before/after answers

    main(args)  # a rerun finds every stage done
    printed = capsys.readouterr().out
    assert printed.count("reusing") == 3
