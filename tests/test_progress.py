"""Progress with an ETA: plain lines in a log file, a rich bar whose ETA shows at 80 columns, one display at a
time; `eval accuracy`, `pairs build` and the reference precompute report through it."""

import json
import re

import pytest
import yaml
from rich.console import Console

from alignkit import progress as progress_mod
from alignkit.cli import main
from alignkit.progress import Estimate, bar, clock, progress


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_plain_lines_have_done_total_rate_and_eta():
    now, lines = Clock(), []
    with progress("eval accuracy", total=10, write=lines.append, now=now, every=1e9) as advance:
        for _ in range(10):
            now.t += 2.0
            advance()
    assert len(lines) == 10  # one a tenth
    assert lines[2] == "eval accuracy: 3/10 (30%), 2.00s each, 0:06 elapsed, ETA 0:14"
    assert lines[-1] == "eval accuracy: 10/10 (100%), 2.00s each, 0:20 elapsed, ETA 0:00"


def test_plain_lines_every_tenth_or_every_n_seconds_not_every_advance():
    now, lines = Clock(), []
    with progress("pairs build", total=1000, unit="questions", write=lines.append, now=now, every=30) as advance:
        for i in range(1000):
            now.t += 0.5  # 100 items = 50 s: the 30 s interval comes first, then the next tenth
            advance(info=f"{i + 1} pairs")
    assert 15 <= len(lines) <= 40
    assert lines[-1].startswith("pairs build: 1000/1000 (100%), 2.00 questions/s, 8:20 elapsed, ETA 0:00; 1000 pairs")
    mid = next(ln for ln in lines if ln.startswith("pairs build: 500/1000"))
    assert "ETA 4:10" in mid


def test_a_slow_stage_shows_seconds_per_item_and_a_resumed_one_counts_only_new_work():
    now, lines = Clock(), []
    with progress("pairs build", total=10, completed=5, write=lines.append, now=now) as advance:
        now.t += 30.0
        advance()
    assert lines[0] == "pairs build: 6/10 (60%), 30.0s each, 0:30 elapsed, ETA 2:00"


def test_stopped_early_says_where_it_stood_and_empty_stages_say_nothing():
    lines = []
    with progress("x", total=100, write=lines.append, every=1e9, steps=1) as advance:
        advance(37)
    assert [ln.split(",")[0] for ln in lines] == ["x: 37/100 (37%)"]
    with progress("x", total=0, write=lines.append) as advance:
        advance()
    assert len(lines) == 1


def test_an_inner_progress_stays_quiet():
    lines = []
    with progress("outer", total=2, write=lines.append) as advance:
        with progress("inner", total=5, write=lines.append) as inner:
            for _ in range(5):
                inner()
        advance(2)
    assert [ln.split(":")[0] for ln in lines] == ["outer"]
    assert progress_mod._open == 0


def _render(desc, info, width=80):
    now = Clock()
    console = Console(width=width, record=True, force_terminal=True, color_system=None)
    shown = bar(console, get_time=now)
    task = shown.add_task(desc, total=12345, completed=0, info=info)
    for _ in range(5):
        now.t += 1.0
        shown.update(task, advance=100)
    console.print(shown.get_renderable())
    return console.export_text()


@pytest.mark.parametrize("desc, info", [
    ("train", "loss=0.6931 accuracies=0.5 margins=0.01234 grad_norm=1.234 tokens_per_second=12345"),
    ("reference log-probs", ""),
    ("pairs build", "120 pairs, 3 skipped, 1 dropped and some more words to overflow"),
])
def test_the_bar_keeps_its_eta_at_80_columns(desc, info):
    text = _render(desc, info).rstrip("\n")
    assert "\n" not in text and len(text) <= 80
    assert text.startswith(desc) and "500/12345" in text and re.search(r"0:05 ETA 1:5\d", text)
    if len(info) > 20:
        assert text.rstrip().endswith("…")  # the info is what gives way


def test_progress_on_a_terminal_draws_the_bar():
    now = Clock()
    console = Console(width=80, record=True, force_terminal=True, color_system=None)
    with progress("eval accuracy", total=40, console=console, now=now) as advance:
        for _ in range(4):
            now.t += 1.5
            advance(10)
    text = console.export_text()
    assert "eval accuracy" in text and "40/40" in text and "ETA 0:00" in text
    frames = [f.rstrip() for f in re.split(r"(?=eval accuracy)", text) if f.strip()]  # redrawn in place
    assert frames[-1].endswith("40/40 0:06 ETA 0:00") and all(len(f) <= 80 for f in frames)


def test_clock_and_estimate():
    assert [clock(s) for s in (0, 7.4, 754, 3723, None, float("inf"))] == ["0:00", "0:07", "12:34", "1:02:03",
                                                                            "-:--", "-:--"]
    now = Clock()
    e = Estimate(100, 0, now)
    assert e.eta(0) is None
    now.t += 10
    assert e.eta(25) == pytest.approx(30.0) and e.eta(100) == 0.0


def test_eval_accuracy_reports_progress_per_chunk(tiny_model, tmp_path, capsys):
    main(["eval", "accuracy", "--model", str(tiny_model), "--task", "addition-2d", "--limit", "12",
          "--batch-size", "4", "--max-new-tokens", "4", "--out", str(tmp_path / "eval")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("eval accuracy:")]
    # chunks of a quarter (3), less than the batch (4): an ETA from the first quarter on
    assert [ln.split(" (")[0] for ln in err] == [f"eval accuracy: {n}/12" for n in (3, 6, 9, 12)]
    assert all("questions/s" in ln or "s each" in ln for ln in err) and all("ETA" in ln for ln in err)
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["items"] == 12


def test_pairs_build_reports_progress_per_chunk(tiny_model, tmp_path, capsys):
    cfg = tmp_path / "pairs.yaml"
    cfg.write_text(yaml.safe_dump({
        "task": {"name": "addition-2d", "split": "train", "limit": 8},
        "student": {"model": str(tiny_model), "samples": 2, "max_new_tokens": 8, "batch_size": 8},
        "teacher": {"kind": "solver"}, "output_dir": str(tmp_path / "out"), "chunk": 4,
    }))
    main(["pairs", "build", "--config", str(cfg)])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("pairs build:")]
    assert [ln.split(" (")[0] for ln in err] == ["pairs build: 4/8", "pairs build: 8/8"]
    assert err[-1].endswith("ETA 0:00; 8 pairs, 0 skipped, 0 dropped")
