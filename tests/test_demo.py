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
    pairs = sum(1 for line in (out / "pairs" / "pairs.jsonl").read_text().splitlines() if line.strip())
    built = re.search(r"<h2>Pairs built</h2><table><thead>.*?</thead><tbody><tr><td>(\d+)</td><td>(\d+)</td>", html)
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
