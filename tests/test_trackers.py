"""train.report_to: a DPO run's metrics go to each tracker, step for step as in metrics.jsonl, with the resolved
config once; a tracker whose library is missing stops the run before it starts, naming the pip extra."""

import json
from pathlib import Path

import pytest
import yaml

from alignkit import AlignkitError
from alignkit.cli import main
from alignkit.config import DPOConfig, load_config
from alignkit.train import log as train_log
from conftest import ROOT

DATA = ROOT / "data" / "arith" / "train.jsonl"
HELD = ROOT / "data" / "arith" / "heldout.jsonl"


def _config(tmp_path: Path, model: Path) -> Path:
    held = tmp_path / "heldout.jsonl"
    held.write_text("".join(HELD.read_text().splitlines(keepends=True)[:8]))
    cfg = tmp_path / "dpo.yaml"
    cfg.write_text(
        f"model:\n  path: {model}\n"
        f"data:\n  train: {DATA}\n  eval: {held}\n  max_length: 160\n  max_prompt_length: 96\n"
        f"reference:\n  cache_dir: {tmp_path / 'ref-cache'}\n"
        "train:\n  batch_size: 4\n  micro_batch_size: 2\n  lr: 1.0e-3\n  max_steps: 3\n  eval_batch_size: 8\n"
    )
    return cfg


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _tensorboard_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}, acc


def test_a_dpo_run_reports_to_tensorboard_and_mlflow(tiny_model, tmp_path, monkeypatch, capsys):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    run = tmp_path / "run"
    main(["dpo", "--config", str(_config(tmp_path, tiny_model)), f"train.output_dir={run}",
          "train.report_to=[tensorboard,mlflow]"])
    rows = _metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    # The reference precompute reported its progress (stderr is not a terminal here: plain lines).
    assert "reference log-probs: 40/40 (100%)" in capsys.readouterr().err

    scalars, acc = _tensorboard_scalars(run)
    for name in ("loss", "rewards/accuracies", "rewards/margins", "grad_norm", "learning_rate", "eval_loss"):
        want = [(r["step"], r[name]) for r in rows if name in r]
        got = scalars[name]
        assert [s for s, _ in got] == [s for s, _ in want], name
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6, abs=1e-7), name  # float32
    (text,) = acc.Tensors("config/text_summary")  # the resolved config, once, as a text summary
    shown = text.tensor_proto.string_val[0].decode()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert yaml.safe_load(shown.strip("`\n").removeprefix("yaml\n")) == saved

    ids = json.loads((run / "trackers.json").read_text())
    uri = (run / "mlruns").resolve().as_uri()
    client = MlflowClient(uri)
    mlrun = client.get_run(ids["mlflow"])
    assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == "run"
    for name in ("loss", "rewards/accuracies", "grad_norm", "eval_loss"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(ids["mlflow"], name))
        assert history == [(r["step"], r[name]) for r in rows if name in r], name  # exactly metrics.jsonl's
    params = mlrun.data.params
    assert params["train.lr"] == json.dumps(saved["train"]["lr"]) and params["model.path"] == str(tiny_model)
    assert params["train.report_to"] == '["tensorboard", "mlflow"]' and params["loss.type"] == "sigmoid"
    assert len(params) == len(train_log._flat(saved))  # every key of config.yaml


def _wandb_records(path: Path) -> list:
    """The records of an offline run's .wandb file: a LevelDB-style log (7-byte file header; 32 KiB blocks of
    records, each with a 7-byte header: crc, length, type 1 full / 2 first / 3 middle / 4 last) of protobufs."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, records, part = path.read_bytes(), 7, 32768, [], b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # block padding
            pos += left
            continue
        part += data[pos + 7 : pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(part)
            records.append(record)
            part = b""
    return records


def test_wandb_offline_gets_the_config_and_the_metrics(tiny_model, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    run = tmp_path / "run"
    main(["dpo", "--config", str(_config(tmp_path, tiny_model)), f"train.output_dir={run}", "train.report_to=wandb"])
    ids = json.loads((run / "trackers.json").read_text())
    (offline,) = (run / "wandb").glob(f"offline-run-*-{ids['wandb']}")
    records = _wandb_records(offline / f"run-{ids['wandb']}.wandb")
    (started,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert started.project == "alignkit" and started.display_name == "run"
    config = {u.key: json.loads(u.value_json) for u in started.config.update}
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert {k: config[k] for k in saved} == saved  # the resolved config, every section
    history = {r.history.step.num: {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"}
    rows = _metrics(run)
    assert sorted(history) == [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert {k: history[row["step"]][k] for k in row if k != "step"} == pytest.approx(
            {k: v for k, v in row.items() if k != "step"}, rel=1e-9)


def test_the_tensorboard_alias_and_report_to_merge(tmp_path):
    cfg = load_config(DPOConfig, None, ["data.train=x", "train.tensorboard=true", "train.report_to=[mlflow]"])
    assert train_log.trackers_of(cfg.train) == ["mlflow", "tensorboard"]
    cfg = load_config(DPOConfig, None, ["data.train=x", "train.tensorboard=true", "train.report_to=tensorboard"])
    assert train_log.trackers_of(cfg.train) == ["tensorboard"]
    assert load_config(DPOConfig, None, ["data.train=x", "train.report_to=none"]).train.report_to == []


def test_an_unknown_tracker_is_a_config_error():
    with pytest.raises(AlignkitError, match=r"train.report_to.0: Input should be 'tensorboard', 'wandb', 'mlflow' or "
                                            r"'trackio' \(got 'tensorbord'\)"):
        load_config(DPOConfig, None, ["data.train=x", "train.report_to=[tensorbord]"])


def test_a_missing_tracker_library_stops_the_run_before_it_starts(tiny_model, tmp_path, monkeypatch, capsys):
    real = train_log.importlib.util.find_spec
    monkeypatch.setattr(train_log.importlib.util, "find_spec", lambda name, *a: None if name == "trackio" else
                        real(name, *a))
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["dpo", "--config", str(_config(tmp_path, tiny_model)), f"train.output_dir={run}",
              "train.report_to=[trackio]"])
    assert e.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: train.report_to: trackio is not installed; pip install 'alignkit[trackio]'"
    assert not (run / "config.yaml").exists() and not (run / "metrics.jsonl").exists()  # nothing of a run written


def test_a_resumed_run_starts_new_tracker_runs_and_tensorboard_drops_the_steps_after_the_checkpoint(
        tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run, config = tmp_path / "run", {"train": {"lr": 0.001, "report_to": ["tensorboard", "mlflow"]}}
    run.mkdir()
    first = train_log.MetricsLog(run, 4, 0, True, ["tensorboard", "mlflow"], config)
    for step in (1, 2, 3):  # killed after step 3; the checkpoint is step 2's
        first.write(step, {"loss": 1.0 / step})
    first.close()
    first_id = json.loads((run / "trackers.json").read_text())["mlflow"]
    second = train_log.MetricsLog(run, 4, 2, True, ["tensorboard", "mlflow"], config)
    with pytest.raises(RuntimeError):
        try:
            for step in (3, 4):
                second.write(step, {"loss": 10.0 + step})
            raise RuntimeError("a crash after step 4")
        finally:
            second.close()
    assert [(r["step"], r["loss"]) for r in _metrics(run)] == [(1, 1.0), (2, 0.5), (3, 13.0), (4, 14.0)]
    scalars, _ = _tensorboard_scalars(run)
    assert scalars["loss"] == [(1, 1.0), (2, 0.5), (3, 13.0), (4, 14.0)]  # step 3 of the killed run purged
    client = MlflowClient((run / "mlruns").resolve().as_uri())
    second_id = json.loads((run / "trackers.json").read_text())["mlflow"]
    assert second_id != first_id
    first_loss = [(m.step, m.value) for m in client.get_metric_history(first_id, "loss")]
    assert first_loss == [(1, 1.0), (2, 0.5), (3, 0.33333333)]  # as metrics.jsonl rounds them
    assert [(m.step, m.value) for m in client.get_metric_history(second_id, "loss")] == [(3, 13.0), (4, 14.0)]
    assert client.get_run(first_id).info.status == "FINISHED" and client.get_run(second_id).info.status == "FAILED"
    assert client.get_run(second_id).data.tags["alignkit.start_step"] == "2"
    params = client.get_run(second_id).data.params
    assert params == {"train.lr": "0.001", "train.report_to": '["tensorboard", "mlflow"]'}
