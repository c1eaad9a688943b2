"""Atomic checkpoints: write into a temporary directory, fsync, then rename. Keep the newest N.

A checkpoint holds the trainable parameters (safetensors), the optimizer state, the scheduler state, the
RNG state and the step. A run killed while writing leaves only a `.tmp-*` directory, which is ignored and
removed, so the previous checkpoint stays loadable.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STEP_DIR = re.compile(r"^step-(\d+)$")


def _fsync_tree(path: Path) -> None:
    for f in path.iterdir():
        if f.is_dir():
            continue
        with f.open("rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(dest: Path):
    """Write a directory (a final model) all at once: yields a temporary sibling to fill, which replaces `dest`
    only when the block finishes. A failure removes it; what an earlier killed write left (`<name>.tmp-*`) is
    removed first, so no model-sized leftover survives the next write."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    for leftover in dest.parent.glob(f"{dest.name}.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    old = dest.with_name(f"{dest.name}.tmp-{os.getpid()}-old")
    try:
        yield tmp
        if dest.exists():
            os.rename(dest, old)  # a rename, not a delete: the old directory leaves and the new one arrives at once
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save(ckpt_root: Path, step: int, model, optimizer, scheduler, keep_last: int) -> Path:
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step:08d}"
    tmp = ckpt_root / f".tmp-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "scheduler": scheduler.state_dict()}))
    _fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    fd = os.open(ckpt_root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    for old in list_checkpoints(ckpt_root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    if not ckpt_root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest(ckpt_root: Path) -> Path | None:
    for leftover in ckpt_root.glob(".tmp-step-*") if ckpt_root.is_dir() else []:
        shutil.rmtree(leftover, ignore_errors=True)  # an interrupted write
    found = list_checkpoints(ckpt_root)
    return found[-1] if found else None


def load(path: Path, model, optimizer, scheduler) -> int:
    """Restore a checkpoint into model, optimizer and scheduler; returns its step. A file that cannot be read (an
    empty or torn file, another run's checkpoint) is an error naming it, before anything is restored."""
    from alignkit import AlignkitError

    current = None
    try:
        current = path / "state.json"
        state = json.loads(current.read_text())
        step = int(state["step"])
        current = path / "trainable.safetensors"
        tensors = load_file(str(current))
        current = path / "optimizer.pt"
        optimizer_state = torch.load(current, weights_only=True)
        current = path / "rng.pt"
        rng = torch.load(current, weights_only=True)["torch"]
        params = dict(model.named_parameters())
        current = path / "trainable.safetensors"
        unknown = sorted(set(tensors) - set(params))
        if unknown:
            raise ValueError(f"parameter {unknown[0]} is not in this model (another run's checkpoint?)")
    except Exception as e:  # json, safetensors, pickle and key errors alike: the file is not what a save wrote
        raise AlignkitError(f"{current}: unreadable checkpoint file ({type(e).__name__}: {str(e)[:120]}); "
                            f"move {path} away to resume from an earlier checkpoint") from None
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)
    optimizer.load_state_dict(optimizer_state)
    torch.set_rng_state(rng)
    scheduler.load_state_dict(state["scheduler"])
    return step


# --- sharded runs (FSDP, DeepSpeed): Accelerate's state API, every process writing its shard ---------------------

def save_sharded(ckpt_root: Path, step: int, accelerator, scheduler, keep_last: int) -> Path:
    """The run's state through `accelerator.save_state` (model and optimizer shards, RNG states), plus the step and
    the scheduler; written into a temporary directory every process sees, then renamed by the main process."""
    final = ckpt_root / f"step-{step:08d}"
    tmp = ckpt_root / f".tmp-step-{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()  # the directory exists before any process writes into it
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "state.json").write_text(json.dumps({"step": step, "scheduler": scheduler.state_dict(),
                                                    "sharded": True}))
        for sub in [tmp, *[p for p in tmp.rglob("*") if p.is_dir()]]:
            _fsync_tree(sub)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        for old in list_checkpoints(ckpt_root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_sharded(path: Path, accelerator, scheduler) -> int:
    """Restore a checkpoint written by save_sharded into the prepared model and optimizer; returns its step."""
    from alignkit import AlignkitError

    try:
        state = json.loads((path / "state.json").read_text())
        step = int(state["step"])
        if not state.get("sharded"):
            raise ValueError("written by an unsharded run")
        accelerator.load_state(str(path))
    except Exception as e:
        raise AlignkitError(f"{path}: cannot resume this sharded run from it ({type(e).__name__}: {str(e)[:160]}); "
                            "a checkpoint resumes under the launch config (FSDP or not, processes) that wrote it") \
            from None
    scheduler.load_state_dict(state["scheduler"])
    return step

