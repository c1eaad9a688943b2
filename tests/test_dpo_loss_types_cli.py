"""`alignkit dpo` end to end on a tiny model with the loss types beyond the first five: ORPO and CPO without a
reference, a weighted mix (MPO), bco_pair's running mean across a resume, f-divergence."""

from pathlib import Path

import pytest

from alignkit.cli import main
from test_dpo_cli import TRL_KEYS, _config, _metrics


def _refuse_reference(monkeypatch):
    """Any attempt to build a reference (cached table, frozen copy, adapter) fails the test."""
    from alignkit.models import reference

    def refuse(*args, **kwargs):
        raise AssertionError("a reference was built for a reference-free loss")

    for name in ("cached_tables", "model_reference", "read_logps"):
        monkeypatch.setattr(reference, name, refuse)


@pytest.mark.parametrize("loss, extra, keys", [
    ("orpo", [], {"nll_loss"}),
    ("cpo", [], {"nll_loss"}),
    ("cpo", ["loss.cpo_variant=simpo", "loss.beta=2.0"], {"nll_loss"}),
    ("[sigmoid,bco_pair,sft]", ["loss.weights=[0.8,0.2,1.0]"],
     {"loss/sigmoid", "loss/bco_pair", "loss/sft", "nll_loss", "bco_delta"}),
    ("bco_pair", [], {"bco_delta"}),
    # ~4 s each, slow suite: the path sigmoid's and robust's runs take, their values in tests/losses
    pytest.param("sigmoid", ["loss.f_divergence=js_divergence"], set(), marks=pytest.mark.slow),
    pytest.param("exo_pair", ["loss.label_smoothing=0.001"], set(), marks=pytest.mark.slow),
])
def test_loss_type_trains(loss, extra, keys, tiny_model, tmp_path, capsys, monkeypatch):
    reference_free = loss in ("orpo", "cpo")
    if reference_free:
        _refuse_reference(monkeypatch)
    run = tmp_path / "run"
    main(["dpo", "--config", str(_config(tmp_path, tiny_model)), f"loss.type={loss}", f"train.output_dir={run}",
          *extra])
    rows = _metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert TRL_KEYS | keys <= rows[0].keys()
    assert all(r["loss"] == r["loss"] for r in rows)  # finite, not nan
    assert "eval_loss" in rows[-1] and "eval_rewards/accuracies" in rows[-1]
    out = capsys.readouterr().out
    assert ("reference: none" in out) == reference_free
    assert ("reference log-probs" in out) != reference_free
    if reference_free:
        assert not (tmp_path / "ref-cache").exists()
    assert (run / "final" / "model.safetensors").is_file()


def test_orpo_with_tiny_lambda_is_the_nll_of_chosen(tiny_model, tmp_path):
    """ORPO = NLL of chosen + λ·L_OR, and L_OR ≤ a few nats here: with λ = 1e-4 the logged loss is the logged
    nll_loss (the mean token NLL of chosen's response) to 0.1%."""
    run = tmp_path / "run"
    main(["dpo", "--config", str(_config(tmp_path, tiny_model)), "loss.type=orpo", "loss.beta=0.0001",
          f"train.output_dir={run}", "train.max_steps=1"])
    row = _metrics(run)[0]
    assert row["loss"] == pytest.approx(row["nll_loss"], rel=1e-3)


def test_bco_running_mean_survives_resume(tiny_model, tmp_path):
    """4 steps straight == 3 steps (checkpoint at 2), then resumed to 4: δ at steps 3 and 4 is restored from the
    rewards logged beside the checkpoints, so the losses agree."""
    cfg = _config(tmp_path, tiny_model, save_every=2, scheduler="constant")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    main(["dpo", "--config", str(cfg), "loss.type=bco_pair", f"train.output_dir={straight}", "data.eval=null"])
    main(["dpo", "--config", str(cfg), "loss.type=bco_pair", f"train.output_dir={resumed}", "data.eval=null",
          "train.max_steps=3"])
    main(["dpo", "--config", str(cfg), "loss.type=bco_pair", f"train.output_dir={resumed}", "data.eval=null"])
    a, b = _metrics(straight), _metrics(resumed)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert a[2]["bco_delta"] != 0.0
    for key in ("bco_delta", "loss"):
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], abs=1e-6), key
    assert sorted(p.name for p in (resumed / "checkpoints").glob("bco-*")) == ["bco-rewards-rank0.jsonl"]


def test_resumed_run_without_reward_record_restarts_delta(tiny_model, tmp_path, capsys):
    cfg = _config(tmp_path, tiny_model, save_every=2, scheduler="constant")
    run = tmp_path / "run"
    main(["dpo", "--config", str(cfg), "loss.type=bco_pair", f"train.output_dir={run}", "data.eval=null",
          "train.max_steps=3"])
    Path(run / "checkpoints" / "bco-rewards-rank0.jsonl").unlink()
    main(["dpo", "--config", str(cfg), "loss.type=bco_pair", f"train.output_dir={run}", "data.eval=null"])
    assert "δ starts again from 0" in capsys.readouterr().out
    assert _metrics(run)[2]["bco_delta"] == 0.0
