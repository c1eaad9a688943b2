"""Metrics to metrics.jsonl, the console (a progress bar with ETA, or a plain line per logged step) and the
experiment trackers of `train.report_to` (TensorBoard, Weights & Biases, MLflow, Trackio).

Each tracker gets every logged step's metrics (what metrics.jsonl holds, step for step) and the run's resolved
config (its config.yaml) once, through the library's own API. Each library is an optional extra; a tracker
asked for but not installed is an error before training starts (`check_trackers`), never a silent skip.

- tensorboard: event files in <output_dir>/tensorboard (the config as a text summary "config");
- wandb: `wandb.init(project=$WANDB_PROJECT or "alignkit", name=<output_dir's name>, dir=<output_dir>)`, so
  WANDB_MODE=offline (and every other WANDB_* variable) applies;
- mlflow: $MLFLOW_TRACKING_URI when set, else the local file store file:<output_dir>/mlruns; experiment
  $MLFLOW_EXPERIMENT_NAME or "alignkit"; the config as params with dotted keys ("train.lr");
- trackio: `trackio.init(project=$TRACKIO_PROJECT or "alignkit", name=<output_dir's name>, config=...)`.

<output_dir>/trackers.json names the wandb and MLflow runs of the latest invocation. A resumed run (train.resume,
from a checkpoint) starts new wandb, MLflow and Trackio runs from the checkpoint's step on (no step is logged
twice into one run), and TensorBoard hides its events past the checkpoint (purge_step).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Sequence

from rich.console import Console

from alignkit import progress as progress_display

log = logging.getLogger(__name__)
CONSOLE_KEYS = ("loss", "rewards/accuracies", "rewards/margins", "grad_norm", "tokens_per_second")
BAR_NAMES = {"rewards/accuracies": "acc", "rewards/margins": "margin", "grad_norm": "gnorm",
             "tokens_per_second": "tok/s"}  # shorter in the bar, whose info an 80-column terminal cuts
TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")  # each the name of its pip extra and of its module


def trackers_of(train_cfg) -> list[str]:
    """train.report_to, with tensorboard added by the train.tensorboard alias; each name once."""
    names = list(getattr(train_cfg, "report_to", None) or [])
    if getattr(train_cfg, "tensorboard", False):
        names.append("tensorboard")
    return list(dict.fromkeys(names))


def check_trackers(names: Sequence[str]) -> None:
    """Every tracker asked for is known and installed; else a one-line error naming the extra to install."""
    from alignkit import AlignkitError

    for name in names:
        if name not in TRACKERS:
            raise AlignkitError(f"train.report_to: unknown tracker '{name}' (expected {', '.join(TRACKERS)})")
        if importlib.util.find_spec(name) is None:
            raise AlignkitError(f"train.report_to: {name} is not installed; pip install 'alignkit[{name}]'")


class MetricsLog:
    def __init__(self, run_dir: Path, total_steps: int, start_step: int, enabled: bool,
                 trackers: Sequence[str] | bool = (), config: dict | None = None):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.trackers: list = []
        self.progress = None
        self.total_steps = total_steps
        names = ["tensorboard"] if trackers is True else [] if trackers is False else list(trackers)
        if enabled:
            check_trackers(names)
        progress_display.claim()  # on every process: a progress opened during training (rollouts) stays quiet
        self.claimed = True
        if not enabled:
            return
        _truncate_after(self.path, start_step)
        self.file = self.path.open("a", encoding="utf-8")
        self.estimate = progress_display.Estimate(total_steps, start_step)
        try:
            for name in names:
                self.trackers.append(_OPEN[name](run_dir, config or {}, start_step))
            ids = {t.name: t.id for t in self.trackers if getattr(t, "id", None)}
            if ids:  # this invocation's runs
                (run_dir / "trackers.json").write_text(json.dumps(ids, indent=1) + "\n")
            elif (run_dir / "trackers.json").exists():
                (run_dir / "trackers.json").unlink()
        except BaseException:
            self.close()
            raise
        self.console = Console(stderr=True)
        if not self.console.is_terminal:  # a log file: plain lines, no redrawn bar
            return
        self.progress = progress_display.bar(self.console)
        self.task = self.progress.add_task("train", total=total_steps, completed=start_step, info="",
                                           done_before=start_step)
        self.progress.start()

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: round(v, 8) if isinstance(v, float) else v for k, v in metrics.items()}}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.trackers:
            numbers = {k: v for k, v in row.items() if k != "step" and _is_number(v)}
            for tracker in self.trackers:
                tracker.log(numbers, step)
        shown = " ".join(f"{k.split('/')[-1]}={metrics[k]:.4g}" for k in CONSOLE_KEYS if k in metrics)
        evals = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k.startswith("eval_") and k.count("/") < 2)
        if self.progress is None:
            clock = progress_display.clock
            eta = f"({clock(self.estimate.elapsed())} elapsed, ETA {clock(self.estimate.eta(step))})"
            self.console.print(f"step {step}/{self.total_steps}: " + " ".join(p for p in (shown, evals, eta) if p),
                               soft_wrap=True, highlight=False, markup=False)
            return
        if evals:
            self.progress.console.print(f"step {step}: {evals}", highlight=False, markup=False)
        if shown:
            self.progress.update(self.task, info=" ".join(f"{BAR_NAMES.get(k, k.split('/')[-1])}={metrics[k]:.4g}"
                                                          for k in CONSOLE_KEYS if k in metrics))

    def advance(self, step: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step)

    def close(self) -> None:
        if self.claimed:
            progress_display.release()
            self.claimed = False
        if not self.enabled:
            return
        failed = sys.exc_info()[0] is not None  # closed while an error propagates (the loop's finally)
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if getattr(self, "file", None) is not None and not self.file.closed:
            self.file.close()
        while self.trackers:
            tracker = self.trackers.pop()
            try:
                tracker.close(failed)
            except Exception as e:  # one tracker failing to close must not hide the run's own outcome
                log.warning("train.report_to: closing %s failed: %s", tracker.name, e)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _flat(tree, prefix: str = "") -> dict[str, object]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, object] = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


class _TensorBoard:
    name = "tensorboard"

    def __init__(self, run_dir: Path, config: dict, start_step: int):
        import yaml
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        self.writer.add_text("config", "```yaml\n" + yaml.safe_dump(config, sort_keys=False) + "```", 0)
        self.writer.flush()

    def log(self, metrics: dict, step: int) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)

    def close(self, failed: bool) -> None:
        self.writer.close()


class _WandB:
    name = "wandb"

    def __init__(self, run_dir: Path, config: dict, start_step: int):
        import wandb

        run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "alignkit"), name=run_dir.name,
                              dir=str(run_dir), config=config)
        self.id = self.run.id

    def log(self, metrics: dict, step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class _MLflow:
    name = "mlflow"

    def __init__(self, run_dir: Path, config: dict, start_step: int):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient
        from mlflow.utils import validation

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # the local file store; MLflow 3 asks for this opt-in to use it
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (run_dir / "mlruns").resolve().as_uri()
        self.uri = uri
        self.client = client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "alignkit")
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
        self.id = client.create_run(experiment_id, run_name=run_dir.name, tags={
            "alignkit.output_dir": str(run_dir.resolve()), "alignkit.start_step": str(start_step)}).info.run_id
        limit = getattr(validation, "MAX_PARAM_VAL_LENGTH", 500)
        per_batch = getattr(validation, "MAX_PARAMS_TAGS_PER_BATCH", 100)
        params = [Param(k, (v if isinstance(v, str) else json.dumps(v))[:limit]) for k, v in _flat(config).items()]
        for s in range(0, len(params), per_batch):
            client.log_batch(self.id, params=params[s : s + per_batch])

    def log(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.id, metrics=[Metric(re.sub(r"[^\w\-. :/]", "_", k), float(v), now, step)
                                                for k, v in metrics.items()])

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.id, status="FAILED" if failed else "FINISHED")


class _Trackio:
    name = "trackio"

    def __init__(self, run_dir: Path, config: dict, start_step: int):
        import trackio

        # resume="never": a name already taken in the project gets a fresh one from trackio
        self.run = trackio.init(project=os.environ.get("TRACKIO_PROJECT", "alignkit"), name=run_dir.name,
                                config=config, resume="never")

    def log(self, metrics: dict, step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self, failed: bool) -> None:
        self.run.finish()


_OPEN = {"tensorboard": _TensorBoard, "wandb": _WandB, "mlflow": _MLflow, "trackio": _Trackio}


def _truncate_after(path: Path, step: int) -> None:
    """On resume, drop metrics logged after the checkpoint so the file holds one trajectory."""
    if not path.exists():
        return
    kept = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip() and _step(ln) <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")
    os.replace(tmp, path)


def _step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, ValueError):
        return 1 << 62  # a torn last line from a killed run: drop it
