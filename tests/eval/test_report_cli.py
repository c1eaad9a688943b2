"""`alignkit report` on a real tiny DPO run with real before/after evaluations beside it: the page has a
non-empty plot per metric group, the evaluation table compares before and after, and sample answers show."""

import json
import shutil
from html.parser import HTMLParser

import pytest

from alignkit.cli import main
from alignkit.eval.run_report import HEADLINE, group_of
from conftest import ROOT


class Plots(HTMLParser):
    """(title, [points of each polyline]) of every <svg class="plot"> element, in page order."""

    def __init__(self):
        super().__init__()
        self.plots: list[tuple[str, list[int]]] = []
        self.inside = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "svg" and attrs.get("class") == "plot":
            self.plots.append((attrs["aria-label"], []))
            self.inside = True
        elif tag == "polyline" and self.inside:
            self.plots[-1][1].append(len(attrs["points"].split()))

    def handle_endtag(self, tag):
        if tag == "svg":
            self.inside = False


def plots_of(html: str) -> list[tuple[str, list[int]]]:
    parser = Plots()
    parser.feed(html)
    return parser.plots


@pytest.fixture(scope="module")
def dpo_run(tiny_model, tmp_path_factory):
    """A 4-step DPO run (eval every 2 steps) in base/run, `eval accuracy` of the model before and after in
    base/eval-before and base/eval-after."""
    base = tmp_path_factory.mktemp("report")
    for name, rows in (("train", 16), ("heldout", 8)):  # a few rows keep the run to seconds
        lines = (ROOT / "data" / "arith" / f"{name}.jsonl").read_text().splitlines()[:rows]
        (base / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    cfg = base / "dpo.yaml"
    cfg.write_text(
        f"model:\n  path: {tiny_model}\n"
        f"data:\n  train: {base / 'train.jsonl'}\n  eval: {base / 'heldout.jsonl'}\n"
        "  max_length: 160\n  max_prompt_length: 96\n"
        f"reference:\n  cache_dir: {base / 'ref-cache'}\n"
        f"train:\n  output_dir: {base / 'run'}\n  batch_size: 4\n  micro_batch_size: 4\n  lr: 1.0e-3\n"
        "  max_steps: 4\n  eval_every: 2\n  eval_batch_size: 40\n")
    main(["dpo", "--config", str(cfg)])
    for name, model in (("eval-before", tiny_model), ("eval-after", base / "run" / "final")):
        main(["eval", "accuracy", "--model", str(model), "--task", "addition-2d", "--limit", "3",
              "--max-new-tokens", "4", "--out", str(base / name)])
    return base / "run"


def test_report_of_a_dpo_run_has_plots_evaluations_and_samples(dpo_run, tmp_path, capsys):
    out = tmp_path / "report.html"
    main(["report", str(dpo_run), "--out", str(out)])
    assert f"wrote {out}" in capsys.readouterr().out
    html = out.read_text()
    plots = dict(plots_of(html))
    assert len(plots) == len(plots_of(html)), "one plot per group"
    for title in ("loss", "accuracy", "rewards", "logps", "grad_norm", "learning_rate", "eval loss",
                  "eval accuracy", "eval rewards"):
        assert plots.get(title), f"no plot '{title}' among {sorted(plots)}"
    assert plots["rewards"] == [4, 4, 4]  # chosen, rejected, margins at steps 1-4
    assert plots["eval loss"] == [2]  # steps 2 and 4
    assert all(n > 1 for counts in plots.values() for n in counts)
    assert "<th>eval-before</th><th>eval-after</th><th>change</th>" in html
    before = json.loads((dpo_run.parent / "eval-before" / "summary.json").read_text())
    assert f"<td>accuracy</td><td>{before['accuracy']:.4g}</td>" in html
    question = json.loads((dpo_run.parent / "eval-after" / "results.jsonl").read_text().splitlines()[0])["question"]
    assert "<h3>Samples</h3>" in html and f"<i>{question}</i>" in html and "config.yaml" in html


def test_report_compares_runs(dpo_run, tmp_path):
    other = tmp_path / "other-run"
    other.mkdir()
    shutil.copy(dpo_run / "metrics.jsonl", other / "metrics.jsonl")
    out = tmp_path / "report.html"
    main(["report", str(dpo_run), str(other), "--out", str(out)])
    html = out.read_text()
    compared, runs = html.split("<h2>run</h2>")  # "Runs compared" comes first, then each run
    compared = dict(plots_of(compared))
    assert set(compared) <= set(HEADLINE)
    assert compared["loss"] == compared["rewards/accuracies"] == [4, 4] and compared["eval_loss"] == [2, 2]
    assert [title for title, _ in plots_of(runs)].count("rewards") == 2
    assert "alignkit report: run, other-run" in html


def test_a_missing_run_directory_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path / "nope")])
    assert e.value.code == 2 and "no such run directory" in capsys.readouterr().err


@pytest.mark.parametrize("key, title", [
    ("loss", "loss"), ("nll_loss", "loss"), ("eval_loss", "eval loss"), ("value_loss", "loss"),
    ("rewards/accuracies", "accuracy"), ("rewards/margins", "rewards"), ("eval_logps/chosen", "eval logps"),
    ("kl", "kl"), ("reward", "reward"), ("grad_norm", "grad_norm"),
])
def test_metric_groups(key, title):
    assert group_of(key)[1] == title
