"""Metrics to metrics.jsonl, the console (progress bar with ETA) and optionally TensorBoard."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

log = logging.getLogger(__name__)
CONSOLE_KEYS = ("loss", "rewards/accuracies", "rewards/margins", "grad_norm", "tokens_per_second")


class MetricsLog:
    def __init__(self, run_dir: Path, total_steps: int, start_step: int, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.writer = None
        self.progress = None
        if not enabled:
            return
        _truncate_after(self.path, start_step)
        self.file = self.path.open("a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.warning("tensorboard is not installed (pip install 'alignkit[tensorboard]'); skipping it")
            else:
                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        self.console = Console(stderr=True)
        if not self.console.is_terminal:  # a log file: plain lines, no redrawn bar
            return
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=False,
        )
        self.task = self.progress.add_task("train", total=total_steps, completed=start_step, info="")
        self.progress.start()

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: round(v, 8) if isinstance(v, float) else v for k, v in metrics.items()}}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.writer is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, step)
        shown = " ".join(f"{k.split('/')[-1]}={metrics[k]:.4g}" for k in CONSOLE_KEYS if k in metrics)
        evals = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k.startswith("eval_") and k.count("/") < 2)
        if self.progress is None:
            self.console.print(f"step {step}: {shown} {evals}".rstrip(), soft_wrap=True, highlight=False)
            return
        if evals:
            self.progress.console.print(f"step {step}: {evals}")
        if shown:
            self.progress.update(self.task, info=shown)

    def advance(self, step: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.stop()
        self.file.close()
        if self.writer is not None:
            self.writer.close()


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
