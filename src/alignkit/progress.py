"""Progress with an ETA for every stage that takes more than a moment.

    with progress("eval accuracy", total=len(items)) as advance:
        for chunk in chunks:
            ...
            advance(len(chunk))                 # or advance(n, info="12 pairs, 3 skipped")

On a terminal (stderr is a TTY) a rich bar that keeps its ETA visible at 80 columns: the description, a bar of
fixed width, done/total, elapsed and ETA, then the stage's own info, which is the part cut (with an ellipsis)
when the line is too narrow. Elsewhere (a log file, CI) one plain line each time another ~10% is done or
`every` seconds have passed, and one at the end:

    eval accuracy: 20/40 (50%), 3.10 questions/s, 0:06 elapsed, ETA 0:06

A progress opened while another is showing (the sampler's batches inside `eval accuracy`, rollouts during
training) stays quiet: one bar at a time.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn
from rich.table import Column
from rich.text import Text

_open = 0  # progress displays (and training logs) open in this process; inner ones stay quiet


def clock(seconds: float | None) -> str:
    """0:07, 12:34, 1:02:03; '-:--' when unknown."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "-:--"
    s = int(round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def rate(done: float, elapsed: float, unit: str = "") -> str:
    """'3.1 questions/s', or '4.20s each' when slower than one a second."""
    if done <= 0 or elapsed <= 0:
        return "-/s"
    per_second = done / elapsed
    if per_second >= 1:
        return f"{_num(per_second)}{' ' + unit if unit else ''}/s"
    return f"{_num(elapsed / done)}s each"


def _num(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


class Estimate:
    """Elapsed time, rate and ETA of `total` units from the units done since it started (completed ones, as on a
    resume, do not count toward the rate)."""

    def __init__(self, total: int, completed: int = 0, now: Callable[[], float] = time.monotonic):
        self.total, self.start_done, self.now = total, completed, now
        self.started = now()

    def elapsed(self) -> float:
        return self.now() - self.started

    def eta(self, done: float) -> float | None:
        progressed, elapsed = done - self.start_done, self.elapsed()
        if done >= self.total:
            return 0.0
        if progressed <= 0 or elapsed <= 0:
            return None
        return (self.total - done) * elapsed / progressed

    def line(self, description: str, done: float, unit: str = "", info: str = "") -> str:
        pct = f" ({100 * done / self.total:.0f}%)" if self.total else ""
        elapsed = self.elapsed()
        text = (f"{description}: {done:g}/{self.total}{pct}, {rate(done - self.start_done, elapsed, unit)}, "
                f"{clock(elapsed)} elapsed, ETA {clock(self.eta(done))}")
        return f"{text}; {info}" if info else text


class _Times(ProgressColumn):
    """'0:12 ETA 1:23': elapsed and remaining time in one narrow column. The ETA is the average pace since the
    task started (its field "done_before": units already done then, as on a resume), as in the plain lines;
    rich's own needs two updates within 30 s, which a stage of a few slow chunks never gets."""

    def render(self, task: Task) -> Text:
        elapsed = (task.finished_time if task.finished else task.elapsed) or 0.0
        done = task.completed - task.fields.get("done_before", 0)
        if task.finished or (task.total is not None and task.completed >= task.total):
            remaining = 0.0
        elif done > 0 and elapsed > 0 and task.total is not None:
            remaining = (task.total - task.completed) * elapsed / done
        else:
            remaining = None
        return Text(f"{clock(elapsed)} ETA {clock(remaining)}", style="progress.remaining", no_wrap=True)


def bar(console: Console | None = None, get_time: Callable[[], float] | None = None, bar_width: int = 16) -> Progress:
    """The one progress layout: what matters (done/total, elapsed, ETA) sits left of the stage's info, which
    shrinks with an ellipsis when the terminal is narrow (80 columns)."""
    extra = {"get_time": get_time} if get_time is not None else {}
    return Progress(
        TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True)),
        BarColumn(bar_width=bar_width),
        MofNCompleteColumn(table_column=Column(no_wrap=True)),
        _Times(table_column=Column(no_wrap=True)),
        TextColumn("{task.fields[info]}", table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1)),
        console=console or Console(stderr=True), expand=True, transient=False, **extra,
    )


def claim() -> None:
    """Something shows progress now (a training log): progress opened meanwhile stays quiet."""
    global _open
    _open += 1


def release() -> None:
    global _open
    _open = max(0, _open - 1)


@contextlib.contextmanager
def progress(description: str, total: int, completed: int = 0, unit: str = "", every: float = 30.0,
             steps: int = 10, write: Callable[[str], None] | None = None, console: Console | None = None,
             now: Callable[[], float] = time.monotonic) -> Iterator[Callable[..., None]]:
    """Yields `advance(n=1, info=None)`. Plain lines go to `write` (default: stderr): one each time another
    1/`steps` of the total is done or `every` seconds have passed, and one at the end. A bar instead where
    `console` (default: stderr's) is a terminal. Quiet when total is 0 or another progress is showing."""
    if total <= 0 or _open:
        yield lambda n=1, info=None: None
        return
    claim()
    try:
        console = console or Console(stderr=True)
        if console.is_terminal:
            with bar(console, get_time=now) as shown:
                task = shown.add_task(description, total=total, completed=completed, info="", done_before=completed)

                def advance(n: float = 1, info: str | None = None) -> None:
                    shown.update(task, advance=n, **({"info": info} if info is not None else {}))

                yield advance
            return
        out = write or (lambda line: print(line, file=sys.stderr, flush=True))
        estimate = Estimate(total, completed, now)
        state = {"done": completed, "info": "", "said_at": estimate.started, "mark": _mark(completed, total, steps),
                 "last": None}

        def advance(n: float = 1, info: str | None = None) -> None:
            state["done"] += n
            if info is not None:
                state["info"] = info
            done, t = state["done"], now()
            mark = _mark(done, total, steps)
            if done >= total or mark > state["mark"] or t - state["said_at"] >= every:
                state.update(mark=mark, said_at=t, last=done)
                out(estimate.line(description, done, unit, state["info"]))

        yield advance
        if state["last"] != state["done"] and state["done"] > completed:  # stopped early: where it stood
            out(estimate.line(description, state["done"], unit, state["info"]))
    finally:
        release()


def _mark(done: float, total: int, steps: int) -> int:
    return int(steps * done / total) if total else 0
