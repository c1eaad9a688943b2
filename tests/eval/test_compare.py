"""`alignkit eval compare`: deltas, and regressions flagged in each metric's better direction."""

import json

import pytest

from alignkit.cli import main
from alignkit.eval.compare import compare, direction


def test_directions():
    assert direction("perplexity") == direction("over_refusal_rate_zh") == direction("accuracy_std") == -1
    assert direction("accuracy") == direction("refusal_rate_en") == direction("pass@4") == direction("win_rate") == 1
    assert direction("items") == direction("seconds") == direction("win_rate_low") == 0


def test_regressions_in_the_right_direction():
    """Accuracy 0.60 -> 0.55 is worse by 0.05 > 0.02; over-refusal 0.10 -> 0.05 is better; perplexity 20 -> 21 is
    5% worse (relative, as it is not a rate); bits per byte 1.00 -> 1.01 is 1% worse, under the threshold."""
    a = {"accuracy": 0.60, "over_refusal_rate": 0.10, "perplexity": 20.0, "bits_per_byte": 1.00, "items": 20}
    b = {"accuracy": 0.55, "over_refusal_rate": 0.05, "perplexity": 21.0, "bits_per_byte": 1.01, "items": 40}
    status = {r["metric"]: r["status"] for r in compare(a, b, 0.02)}
    assert status == {"accuracy": "REGRESSION", "over_refusal_rate": "better", "perplexity": "REGRESSION",
                      "bits_per_byte": "", "items": ""}
    assert {r["metric"]: r["status"] for r in compare(b, a, 0.02)}["perplexity"] == "better"


def _summary(path, metrics, flat=False):
    path.write_text(json.dumps(metrics if flat else {"command": "eval refusal", "metrics": metrics}))
    return str(path)


def test_cli_exit_status(tmp_path, capsys):
    a = _summary(tmp_path / "a.json", {"refusal_rate": 0.9, "over_refusal_rate": 0.1})
    b = _summary(tmp_path / "b.json", {"refusal_rate": 0.9, "over_refusal_rate": 0.3})
    main(["eval", "compare", a, b])  # without --fail-on-regression: reported, exit 0
    out = capsys.readouterr().out
    assert "over_refusal_rate" in out and "REGRESSION" in out and "1 regression(s)" in out
    with pytest.raises(SystemExit) as e:
        main(["eval", "compare", a, b, "--fail-on-regression"])
    assert e.value.code == 1
    main(["eval", "compare", b, a, "--fail-on-regression"])  # the other way round is an improvement
    # A flat summary (eval accuracy writes one) against a missing metric: shown with '-', not flagged.
    c = _summary(tmp_path / "c.json", {"accuracy": 0.5, "items": 10}, flat=True)
    main(["eval", "compare", c, a, "--fail-on-regression"])


def test_cli_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit) as e:
        main(["eval", "compare", str(bad), str(bad)])
    assert e.value.code == 2 and "bad.json: malformed JSON" in capsys.readouterr().err
