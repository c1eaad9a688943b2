"""`alignkit logps`: summed response log-probs of chosen and rejected for every row of a preference file.

    alignkit logps --model smollm2-135m-instruct --data pairs.jsonl --out logps.jsonl

Each output line: {"row", "chosen_logp", "rejected_logp", "chosen_tokens", "rejected_tokens"}, under the
token-boundary contract of DESIGN.md. The file doubles as a reference for `alignkit dpo`
(`reference.logps`), and `alignkit dpo` keeps the same format as its on-disk reference cache.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def run(model_path: str, data: str, out: str, batch_size: int, max_length: int, max_prompt_length: int,
        bf16: bool, split: str, trust_remote_code: bool) -> None:
    from alignkit.data.collate import load_pairs
    from alignkit.data.jsonl import write_jsonl
    from alignkit.models.load import bf16_is_fast, load_model, load_tokenizer
    from alignkit.models.logprobs import SequenceLogps
    from alignkit.models.reference import bf16_autocast, pair_logps

    if bf16 and not bf16_is_fast("cpu"):
        log.warning("--bf16: this processor has no native bf16 (AVX512-BF16/AMX); computing in float32")
        bf16 = False
    tokenizer = load_tokenizer(model_path, trust_remote_code)
    pairs = load_pairs(data, tokenizer, max_length, max_prompt_length, strict=False, split=split)
    model = load_model(model_path, trust_remote_code=trust_remote_code).eval()
    results = pair_logps(SequenceLogps(model), pairs, tokenizer.pad_token_id, batch_size,
                         bf16_autocast() if bf16 else contextlib.nullcontext)
    write_jsonl(Path(out), results)
    prefers = sum(r["chosen_logp"] > r["rejected_logp"] for r in results)
    prefers_norm = sum(r["chosen_logp"] / r["chosen_tokens"] > r["rejected_logp"] / r["rejected_tokens"] for r in results)
    print(f"wrote {len(results)} rows to {out}; prefers chosen: {prefers}/{len(results)} by summed log-prob, "
          f"{prefers_norm}/{len(results)} per token")
