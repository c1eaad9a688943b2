"""`alignkit demo` end to end on a tiny model: every stage runs, the report has its plots, the pairs built, the
DPO config, versions and date, a rerun resumes."""

import datetime
import html as html_lib
import json
import platform
import re
import xml.etree.ElementTree as ET

import torch
import transformers

import alignkit
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
    ns = {"s": "http://www.w3.org/2000/svg"}
    for plot in plots:  # steps 1 and 2: whole-number step ticks, axis titles
        svg = ET.fromstring(plot)
        assert [t.text for t in svg.findall(".//s:text[@class='xtick']", ns)] == ["0", "1", "2", "3"]
        assert [t.text for t in svg.findall(".//s:text[@class='xlabel']", ns)] == ["step"]
        assert svg.find(".//s:text[@class='ylabel']", ns).text == svg.get("aria-label")
    # accuracy per phrasing template: one row each, labelled by one of its questions, covering all 8 questions
    base = [json.loads(line) for line in (out / "eval-base" / "results.jsonl").read_text().splitlines()]
    table = re.search(r"<h2>Held-out accuracy \(greedy pass@1\)</h2><table>.*?</table>", html).group(0)
    templates = {r["phrasing"] for r in base}
    counts = [int(n) for n in re.findall(r"“[^”]*”(?: \(unseen phrasing\))?, (\d+) questions", table)]
    assert len(counts) == len(templates) and sum(counts) == 8
    # and per language: the demo's one language, all 8 questions
    assert re.findall(r"<td>language (\w+), (\d+) questions</td>", table) == [("en", "8")]
    pairs = sum(1 for line in (out / "pairs" / "pairs.jsonl").read_text().splitlines() if line.strip())
    built = re.search(r"<h2>Pairs built</h2><table><thead>.*?</thead><tbody><tr><td>1</td><td>(\d+)</td>"
                      r"<td>(\d+)</td>", html)
    assert built and built.groups() == (str(pairs), "16")
    config = (out / "dpo" / "config.yaml").read_text()
    assert "rpo_alpha: 1.0" in config and "<details><summary>config.yaml" in html
    assert html_lib.escape(config) in html
    for name, version in (("alignkit", alignkit.__version__), ("torch", torch.__version__),
                          ("transformers", transformers.__version__), ("python", platform.python_version())):
        assert f"<th>{name} version</th><td>{version}</td>" in html
    written = datetime.datetime.fromisoformat(re.search(r"<th>written</th><td>([^<]+)</td>", html).group(1))
    assert abs(datetime.datetime.now().astimezone() - written) < datetime.timedelta(hours=1)

    main(args)  # a rerun finds every stage done
    printed = capsys.readouterr().out
    assert printed.count("reusing") == 3


def test_rounds_train_on_fresh_questions_from_the_last_rounds_model(tiny_model, tmp_path, capsys):
    """`--rounds 2`: round 2's student is round 1's trained model, it answers questions round 1 never asked, and
    its DPO starts from that model (the reference refreshed to it) on both rounds' pairs. Accuracy is reported
    after each round; a rerun reuses every stage of both rounds."""
    import yaml

    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--model", str(tiny_model), "--questions", "16", "--heldout", "8",
            "--rounds", "2", "--temperature", "0.7", "--samples", "2", "--rejected", "likeliest"]
    main(args)
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    round1 = [json.loads(line) for line in (out / "pairs" / "pairs.jsonl").read_text().splitlines()]
    round2 = [json.loads(line) for line in (out / "round-2" / "pairs" / "pairs.jsonl").read_text().splitlines()]
    assert not {p["metadata"]["id"] for p in round1} & {p["metadata"]["id"] for p in round2}
    outcomes1 = [json.loads(line)["id"] for line in (out / "pairs" / "outcomes.jsonl").read_text().splitlines()]
    outcomes2 = [json.loads(line)["id"] for line in (out / "round-2" / "pairs" / "outcomes.jsonl").read_text().splitlines()]
    assert len(outcomes1) == len(outcomes2) == 16 and not set(outcomes1) & set(outcomes2)
    student2 = yaml.safe_load((out / "round-2" / "pairs" / "config.yaml").read_text())["student"]
    assert student2["model"] == str(out / "dpo" / "final") and student2["rejected"] == "likeliest"
    dpo2 = yaml.safe_load((out / "round-2" / "dpo" / "config.yaml").read_text())
    assert dpo2["model"]["path"] == str(out / "dpo" / "final")  # the last round's model, also the reference
    train2 = [json.loads(line) for line in (out / "round-2" / "train-pairs.jsonl").read_text().splitlines()]
    assert train2 == round1 + round2
    assert summary["final_model"] == str(out / "round-2" / "dpo" / "final")
    for r, stage in zip(rounds, ("eval-trained", "round-2/eval-trained")):
        results = [json.loads(line) for line in (out / stage / "results.jsonl").read_text().splitlines()]
        assert r["accuracy"] == sum(x["correct"] for x in results) / len(results)
        assert 0 < r["student_ranking"]["pairs"] <= r["pairs"]  # the pairs its DPO visited
    assert summary["accuracy_after"] == rounds[1]["accuracy"]
    assert "(after each round)" in printed and "pairs, round 2" in printed
    html = (out / "report.html").read_text()
    assert "<th>after round 1</th><th>after round 2</th>" in html
    assert html.count("<h3>round ") == 2

    main(args)
    assert capsys.readouterr().out.count("reusing") == 5  # base eval, two DPO runs, two trained evals
