"""`alignkit report` on a real tiny DPO run with real before/after evaluations beside it: the page has a
non-empty plot per metric group, the evaluation table compares before and after, and sample answers show.
The plots themselves, read back as XML: round, distinct tick labels (whole steps on the x axis), axis titles,
a legend inside the SVG, one colour per metric on every plot and page, restarts of the step sequence marked."""

import json
import math
import re
import shutil
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from alignkit.cli import main
from alignkit.eval import report
from alignkit.eval.run_report import HEADLINE, group_of
from conftest import ROOT, write_jsonl

NS = {"s": "http://www.w3.org/2000/svg"}


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


# ---------------------------------------------------------------------------------------------- the plots as XML


def svgs(html: str) -> list[ET.Element]:
    """Every <svg class="plot"> of a page, parsed as XML (which also checks it is well-formed)."""
    found = re.findall(r'<svg class="plot".*?</svg>', html, flags=re.S)
    return [ET.fromstring(svg) for svg in found]


def texts(svg: ET.Element, cls: str) -> list[ET.Element]:
    return svg.findall(f".//s:text[@class='{cls}']", NS)


def title_of(svg: ET.Element) -> str:
    return svg.get("aria-label")


def strokes(svg: ET.Element) -> dict[str, set[str]]:
    """Series name -> the colours its lines are drawn in."""
    out: dict[str, set[str]] = {}
    for line in svg.findall(".//s:polyline[@class='series']", NS):
        out.setdefault(line.get("data-name"), set()).add(line.get("stroke"))
    return out


def check_plot(svg: ET.Element) -> None:
    """The properties every plot must have (asserts)."""
    name = title_of(svg)
    xs = [t.text for t in texts(svg, "xtick")]
    ys = [t.text for t in texts(svg, "ytick")]
    assert 4 <= len(xs) <= 6 and 4 <= len(ys) <= 6, (name, xs, ys)
    assert all(re.fullmatch(r"-?\d+", x) for x in xs), f"{name}: x ticks not whole steps: {xs}"
    assert len(set(xs)) == len(xs) and len(set(ys)) == len(ys), f"{name}: repeated tick labels {xs} {ys}"
    for labels in ([int(x) for x in xs], [float(y) for y in ys]):  # evenly spaced at 1, 2, 2.5 or 5 x 10^k
        steps = {round(b - a, 12) for a, b in zip(labels, labels[1:])}
        assert len({round(d / max(steps), 6) for d in steps}) == 1, f"{name}: uneven ticks {labels}"
        step = max(steps)
        mantissa = step / 10 ** math.floor(math.log10(step))
        assert any(math.isclose(mantissa, m, rel_tol=1e-6) for m in (1, 2, 2.5, 5)), f"{name}: step {step}"
    assert [t.text for t in texts(svg, "xlabel")] == ["step"]
    assert [t.text for t in texts(svg, "ylabel")] and texts(svg, "ylabel")[0].text.strip(), f"{name}: no y title"
    assert texts(svg, "title")[0].text.strip()
    width, height = float(svg.get("width")), float(svg.get("height"))
    legend = texts(svg, "legend")
    assert legend, f"{name}: no legend"
    for t in legend:  # an estimate of the rendered width: 0.65 em a character (10 px font)
        x, y = float(t.get("x")), float(t.get("y"))
        assert 0 <= x and x + len(t.text) * 0.65 * float(t.get("font-size")) <= width and 0 < y <= height, \
            f"{name}: legend entry {t.text!r} at ({x}, {y}) outside {width}x{height}"


def test_every_plot_of_a_run_report_reads_right(dpo_run, tmp_path):
    out = tmp_path / "report.html"
    main(["report", str(dpo_run), "--out", str(out)])
    plots = svgs(out.read_text())
    assert len(plots) >= 9
    for svg in plots:
        check_plot(svg)
    by_title = {title_of(svg): svg for svg in plots}
    assert [t.text for t in texts(by_title["rewards"], "xtick")] == ["1", "2", "3", "4"]  # steps 1-4, no 0.5s
    assert [t.text for t in texts(by_title["rewards"], "ylabel")] == ["rewards"]
    assert not plots[0].findall(".//s:g[@class='mark restart']", NS)  # an uninterrupted run: nothing marked
    # the same metric, the same colour in different plots of the page
    chosen = {c for t in ("rewards", "logps", "eval rewards") for c in strokes(by_title[t])["chosen"]}
    rejected = {c for t in ("rewards", "logps", "eval rewards") for c in strokes(by_title[t])["rejected"]}
    assert len(chosen) == 1 and len(rejected) == 1 and chosen != rejected
    assert strokes(by_title["loss"])["loss"] == strokes(by_title["eval loss"])["loss"]


def test_a_metric_keeps_its_colour_on_other_pages_and_a_run_its_colour_in_every_plot(dpo_run, tmp_path):
    main(["report", str(dpo_run), "--out", str(tmp_path / "one.html")])
    one = {title_of(s): strokes(s) for s in svgs((tmp_path / "one.html").read_text())}
    # another page, where loss shares its plot with other metrics in another order (as the demo's page does)
    metrics = [json.loads(line) for line in (dpo_run / "metrics.jsonl").read_text().splitlines()]
    other = svgs(report.page("other", [("plots", report.metric_plots(
        metrics, {"everything": ["grad_norm", "learning_rate", "rewards/margins", "loss"]}))]))
    assert strokes(other[0])["loss"] == one["loss"]["loss"]
    assert strokes(other[0])["rewards/margins"] == one["rewards"]["margins"]
    looks = {(line.get("stroke"), line.get("stroke-dasharray")) for line in other[0].findall(".//s:polyline", NS)}
    assert len(looks) == 4  # four series, four looks: a colour shared by two (a hash collision) differs in dashes
    # two runs compared: one colour per run, the same in every plot of the page, different between the runs
    second = tmp_path / "second"
    second.mkdir()
    shutil.copy(dpo_run / "metrics.jsonl", second / "metrics.jsonl")
    main(["report", str(dpo_run), str(second), "--out", str(tmp_path / "two.html")])
    html = (tmp_path / "two.html").read_text()
    compared = svgs(html.split("<h2>run</h2>")[0])
    assert len(compared) >= 3
    assert {s.get("data-name") for s in compared[0].findall(".//s:polyline", NS)} == {"run", "second"}
    runs = [{name: colors for name, colors in strokes(svg).items()} for svg in compared]
    assert all(r == runs[0] for r in runs) and runs[0]["run"] != runs[0]["second"]
    # and a metric keeps the colour of the one-run page in the per-run sections of this page
    per_run = [s for s in svgs(html.split("<h2>run</h2>")[1]) if title_of(s) == "loss"]
    assert per_run and strokes(per_run[0])["loss"] == one["loss"]["loss"]


def test_a_restarted_step_sequence_and_a_gap_are_marked(tmp_path):
    run = tmp_path / "resumed"
    run.mkdir()
    steps = [1, 2, 3, 4, 5, 6, 4, 5, 6, 7, 8, 12, 13]  # started again after step 6 from step 3; 9-11 lost
    write_jsonl(run / "metrics.jsonl", [{"step": s, "loss": 1 / s, "rewards/chosen": s / 10} for s in steps])
    (run / "config.yaml").write_text("train:\n  log_every: 1\n")
    out = tmp_path / "report.html"
    main(["report", str(run), "--out", str(out)])
    loss = next(s for s in svgs(out.read_text()) if title_of(s) == "loss")
    check_plot(loss)
    restart = loss.findall(".//s:g[@class='mark restart']", NS)
    gap = loss.findall(".//s:g[@class='mark gap']", NS)
    assert len(restart) == 1 and "step 4 follows step 6" in restart[0].find("s:title", NS).text
    assert len(gap) == 1 and "between step 8 and step 12" in gap[0].find("s:title", NS).text
    for mark in restart + gap:
        assert mark.find("s:line", NS).get("stroke-dasharray")
    # the line is cut at both: no segment runs backwards or across the missing steps
    assert [int(p.get("data-points")) for p in loss.findall(".//s:polyline", NS)] == [6, 5, 2]
    # without the run's log_every a gap is not guessed at; the restart is still seen
    (run / "config.yaml").unlink()
    main(["report", str(run), "--out", str(out)])
    loss = next(s for s in svgs(out.read_text()) if title_of(s) == "loss")
    assert len(loss.findall(".//s:g[@class='mark restart']", NS)) == 1
    assert not loss.findall(".//s:g[@class='mark gap']", NS)


def test_long_and_many_series_names_stay_inside_the_plot(tmp_path):
    run = tmp_path / "wide"
    run.mkdir()
    names = [f"rewards/{'a_very_long_series_name_' * (i % 3 + 1)}{i}" for i in range(9)]
    write_jsonl(run / "metrics.jsonl", [{"step": s, **{n: i * s for i, n in enumerate(names)}} for s in (1, 2, 3)])
    out = tmp_path / "report.html"
    main(["report", str(run), "--out", str(out)])
    (svg,) = svgs(out.read_text())
    check_plot(svg)
    legend = texts(svg, "legend")
    assert len(legend) == 9 and len({float(t.get("y")) for t in legend}) > 1  # wrapped onto several rows
    tooltips = [g.find("s:title", NS).text for g in svg.findall(".//s:g[@class='legend-item']", NS)]
    assert tooltips == [n.removeprefix("rewards/") for n in names]  # the full name, even where the text is cut
    assert any(t.text.endswith("\u2026") for t in legend)


@pytest.mark.parametrize("lo, hi, integer", [
    (1, 2, True), (5, 5, True), (0, 0, True), (15, 25, True), (1, 4, True), (3, 997, True), (1, 123457, True),
    (0.1, 0.1, False), (0, 0, False), (0.1, 0.35, False), (0.6931, 0.6932, False), (0, 1, False),
    (-3.2, 4.7, False), (1e-7, 9e-7, False), (2e-5, 1e-3, False), (1234567, 1234999, False), (1e9, 3e9, False),
])
def test_nice_ticks(lo, hi, integer):
    ticks = report.nice_ticks(lo, hi, integer=integer)
    labels = report.tick_labels(ticks)
    assert 4 <= len(ticks) <= 6 and ticks[0] <= lo and ticks[-1] >= hi and ticks[-1] > ticks[0]
    assert len(set(labels)) == len(labels)
    assert all(math.isclose(float(label), t, rel_tol=1e-9, abs_tol=1e-12) for label, t in zip(labels, ticks))
    if integer:
        assert all(isinstance(t, int) for t in ticks) and all(re.fullmatch(r"-?\d+", label) for label in labels)
    step = ticks[1] - ticks[0]
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert any(math.isclose(mantissa, m, rel_tol=1e-6) for m in (1, 2, 2.5, 5))
