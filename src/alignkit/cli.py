"""`alignkit <command> ...`: one table maps command names to entry points.

    alignkit dpo --config configs/dpo/smollm2-arith.yaml train.max_steps=20
    alignkit logps --model smollm2-135m-instruct --data pairs.jsonl --out logps.jsonl
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional

import typer

from alignkit import AlignkitError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Align language models with preferences.")


@app.command(context_settings={"allow_extra_args": False})
def dpo(
    config: str = typer.Option(..., "--config", "-c", help="YAML config (overrides only; see configs/dpo)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides"),
):
    """Train with DPO (or IPO, hinge, robust, SimPO) on a preference file."""
    from alignkit.algos import dpo as algo
    from alignkit.config import DPOConfig, load_config

    cfg = load_config(DPOConfig, config, overrides or [])
    algo.run(cfg)


@app.command()
def logps(
    model: str = typer.Option(..., help="model directory, hub id in the local cache, .gguf file or alias"),
    data: str = typer.Option(..., help="preference file (.jsonl, .json, .parquet, or a saved dataset dir)"),
    out: str = typer.Option(..., help="output JSONL"),
    batch_size: int = typer.Option(8, min=1),
    max_length: int = typer.Option(4096, min=1),
    max_prompt_length: int = typer.Option(4095, min=1),
    bf16: bool = typer.Option(False, help="bf16 autocast"),
    split: str = typer.Option("train", help="split of a saved DatasetDict"),
    trust_remote_code: bool = typer.Option(False),
):
    """Summed chosen/rejected response log-probs per row (also a reference cache for dpo)."""
    from alignkit.algos import logps as cmd

    cmd.run(model, data, out, batch_size, max_length, max_prompt_length, bf16, split, trust_remote_code)


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alignkit").setLevel(logging.INFO)
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> None:
    _quiet_libraries()
    try:
        code = app(args=argv, standalone_mode=False)
    except AlignkitError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except (typer.Exit, SystemExit) as e:
        sys.exit(getattr(e, "code", getattr(e, "exit_code", 0)))
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
    if isinstance(code, int) and code:
        if code == 130:  # Ctrl-C: the command was interrupted; what it had written stays
            print("interrupted", file=sys.stderr)
        sys.exit(code)


if __name__ == "__main__":
    main()
