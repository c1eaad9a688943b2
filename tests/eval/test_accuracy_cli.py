"""`alignkit eval accuracy` through the CLI on a tiny model: files, fields and sampled metrics."""

import json

import pytest

from alignkit.cli import main
from conftest import write_jsonl


def test_accuracy_on_a_builtin_task_with_samples(tiny_model, tmp_path, capsys):
    out = tmp_path / "acc"
    main(["eval", "accuracy", "--model", str(tiny_model), "--task", "addition-2d", "--limit", "5", "--samples", "3",
          "--k", "1,3", "--max-new-tokens", "6", "--out", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert summary["items"] == len(rows) == 5
    assert {"pass@1", "pass@3", "maj@1", "maj@3", "accuracy", "accuracy_reserved_phrasings"} <= set(summary)
    assert all(len(r["samples"]) == 3 for r in rows)
    # Recompute pass@1 from the per-item rows: the mean fraction of correct samples.
    expected = sum(sum(s["correct"] for s in r["samples"]) / 3 for r in rows) / 5
    assert summary["pass@1"] == pytest.approx(expected)
    assert summary["accuracy"] == sum(r["correct"] for r in rows) / 5
    assert json.loads(capsys.readouterr().out)["items"] == 5


def test_accuracy_on_a_question_file(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "q.jsonl", [{"question": "What is 1 + 1?", "answer": "#### 2"},
                                              {"question": "What is 2 + 2?", "answer": "4"}])
    out = tmp_path / "acc"
    main(["eval", "accuracy", "--model", str(tiny_model), "--task", str(data), "--max-new-tokens", "4",
          "--out", str(out)])
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["answer"] for r in rows] == ["2", "4"]


def test_bad_k_is_a_clear_error(tiny_model, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "accuracy", "--model", str(tiny_model), "--task", "addition-2d", "--samples", "2",
              "--k", "4", "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "each k must be between 1 and --samples 2" in capsys.readouterr().err


def test_accuracy_per_language_and_phrasing(tiny_model, tmp_path):
    """A built-in task in two languages: the summary has accuracy per language and per phrasing template, each
    recomputed from the per-question rows, and the groups cover every question once."""
    out = tmp_path / "acc"
    main(["eval", "accuracy", "--model", str(tiny_model), "--task", "addition-2d", "--limit", "24",
          "--languages", "en,zh", "--max-new-tokens", "4", "--out", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert set(summary["by_language"]) == {"en", "zh"} == {r["language"] for r in rows}
    for key in ("language", "phrasing"):
        groups = summary[f"by_{key}"]
        assert sum(g["items"] for g in groups.values()) == 24
        for name, g in groups.items():
            mine = [r["correct"] for r in rows if r[key] == name]
            assert g["items"] == len(mine) and g["accuracy"] == sum(mine) / len(mine)
    assert all(r["phrasing"].split("/")[0] == r["language"] for r in rows)
    assert len(summary["by_phrasing"]) > 2


def test_bf16_answers_and_says_so(tiny_model, tmp_path, capsys):
    """--bf16 runs the local sampler under bf16 autocast and the summary records the precision; an engine keeps
    the dtype it was started with, so --bf16 with --backend vllm is refused before anything loads."""
    outs = {}
    for flag in ([], ["--bf16"]):
        outs[bool(flag)] = tmp_path / f"acc{len(flag)}"
        main(["eval", "accuracy", "--model", str(tiny_model), "--task", "addition-2d", "--limit", "4",
              "--max-new-tokens", "4", "--out", str(outs[bool(flag)]), *flag])
    summaries = {k: json.loads((v / "summary.json").read_text()) for k, v in outs.items()}
    assert (summaries[False]["precision"], summaries[True]["precision"]) == ("torch.float32", "bf16-autocast")
    assert summaries[True]["items"] == 4
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["eval", "accuracy", "--model", str(tiny_model), "--task", "addition-2d", "--bf16", "--backend", "vllm",
              "--engine-url", "http://127.0.0.1:9", "--out", str(tmp_path / "v")])
    assert e.value.code == 2 and "--bf16 is for the local sampler" in capsys.readouterr().err
