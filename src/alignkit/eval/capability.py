"""Capability regression checks: perplexity on held-out text, and multiple-choice accuracy by log-likelihood.

    alignkit eval perplexity --model smollm2-135m-instruct --file data/eval/heldout.txt
    alignkit eval mc --model smollm2-135m-instruct --file data/eval/mmlu_sample.jsonl

Perplexity: the file is tokenized whole (no special tokens) and scored in windows of `--max-length` tokens that
start every `--stride` tokens; each token is scored once, in the first window that holds it with some context
before it, so with stride < max-length every token but the first window's sees at least max-length − stride
tokens of context. The file's first token has nothing to predict it and is not scored. Reports perplexity
exp(NLL / tokens) and bits per byte (NLL / ln 2 / UTF-8 bytes of the file, comparable across tokenizers).

Multiple choice (MMLU or C-Eval layout): JSONL/JSON/Parquet rows or CSV with a header, a `question`, the choices
as columns `A`, `B`, `C`, `D` (C-Eval) or a `choices` list (MMLU on the hub), and `answer` as a letter or a
0-based index; a header-less CSV is read as MMLU's question,A,B,C,D,answer. Each choice is scored as a
continuation of the prompt "Question: ...\\nAnswer:" ("问题：...\\n答案：" for Chinese questions): the sum of
the log-probs of the choice's tokens (" " + choice in English), prompt and choice tokenized separately. The
highest sum is the model's pick (`accuracy`); `accuracy_norm` picks by the mean log-prob per choice token
instead, which does not favour short choices.

Both write `summary.json` with a flat `metrics` dict (mc also `results.jsonl`) to `--out`.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import torch

from alignkit import AlignkitError
from alignkit.eval.metrics import perplexity

LETTERS = "ABCDEFGHIJ"
PROMPT = {"en": ("Question: {question}\nAnswer:", " {choice}"), "zh": ("问题：{question}\n答案：", "{choice}")}


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def text_nll(model, ids: list[int], max_length: int, stride: int) -> tuple[float, int]:
    """(summed negative log-likelihood, tokens scored) of a token sequence, in sliding windows."""
    from alignkit.models.logprobs import SequenceLogps

    if stride > max_length:
        raise AlignkitError(f"--stride {stride} is longer than --max-length {max_length}: tokens would be skipped")
    scorer = SequenceLogps(model.eval())
    total, count, scored_up_to = 0.0, 0, 1  # token 0 has no predictor
    for begin in range(0, len(ids), stride):
        end = min(begin + max_length, len(ids))
        window = torch.tensor([ids[begin:end]], device=_device(model))  # (1, W)
        positions = torch.arange(begin, end, device=window.device)[None]  # (1, W)
        score = (positions >= max(scored_up_to, begin + 1))  # tokens not yet scored, each with context in the window
        if score.any():
            total -= float(scorer(window, score).sum())
            count += int(score.sum())
        scored_up_to = end
        if end == len(ids):
            break
    return total, count


def run_perplexity(model_path: str, file: str, max_length: int, stride: int) -> dict:
    from alignkit.models.load import load_model, load_tokenizer

    from alignkit.data.files import read_text

    text = read_text(file)
    started = time.time()
    tokenizer = load_tokenizer(model_path)
    ids = _encode(tokenizer, text)
    if len(ids) < 2:
        raise AlignkitError(f"{file}: needs at least two tokens of text")
    nll, count = text_nll(load_model(model_path), ids, max_length, stride)
    metrics = {"perplexity": perplexity(nll, count), "nll_per_token": nll / count,
               "bits_per_byte": nll / math.log(2) / len(text.encode("utf-8")), "tokens": count}
    return {"command": "eval perplexity", "model": model_path, "file": file, "max_length": max_length,
            "stride": stride, "seconds": round(time.time() - started, 1), "metrics": metrics}


# --- multiple choice -----------------------------------------------------------------------------------------

def _csv_rows(path: Path):
    import io

    from alignkit.data.files import read_text

    rows = list(csv.reader(io.StringIO(read_text(path), newline="")))
    if not rows:
        return
    header = [h.strip() for h in rows[0]]
    if "question" in header:
        for number, values in enumerate(rows[1:], 2):
            if any(v.strip() for v in values):
                yield number, dict(zip(header, values))
    elif len(header) == 6:  # MMLU's own CSVs: question, A, B, C, D, answer, no header
        for number, values in enumerate(rows, 1):
            yield number, dict(zip(["question", "A", "B", "C", "D", "answer"], values))
    else:
        raise AlignkitError(f"{path}: row 1: field 'question': missing from the header (or give MMLU's "
                            f"six header-less columns question,A,B,C,D,answer)")


def _number_as_text(value):
    """A numeric choice (42) as text; anything else unchanged."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def read_questions(file: str) -> list[dict]:
    """Rows as {row, question, choices, answer (index)}; a bad row is an error naming the file, row and field."""
    from alignkit.data.formats import read_rows
    from alignkit.eval.answers import text_field

    path = Path(file)
    if not path.exists():
        raise AlignkitError(f"{file}: data file not found")
    rows = _csv_rows(path) if path.suffix.lower() == ".csv" else read_rows(file)
    out = []
    for number, record in rows:
        where = f"{file}: row {number}"
        record = {k: _number_as_text(v) if k in LETTERS else v for k, v in record.items()}
        question = text_field(record, ("question",), where)
        if record.get("choices") is not None:
            choices = record["choices"]
            if isinstance(choices, list):
                choices = [_number_as_text(c) for c in choices]
            if not isinstance(choices, list) or len(choices) < 2 \
                    or not all(isinstance(c, str) and c.strip() for c in choices):
                raise AlignkitError(f"{where}: field 'choices': expected a list of at least two non-empty strings")
        else:
            choices = [text_field(record, (letter,), where) for letter in LETTERS[:4]]
            choices += [record[x] for x in LETTERS[4:] if isinstance(record.get(x), str) and record[x].strip()]
        answer = record.get("answer")
        if isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().upper() in LETTERS[:len(choices)]:
            index = LETTERS.index(answer.strip().upper())
        elif isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
            index = answer
        else:
            raise AlignkitError(f"{where}: field 'answer': expected a letter A-{LETTERS[len(choices) - 1]} or an "
                                f"index 0-{len(choices) - 1}, got {answer!r}")
        out.append({"row": number, "question": question, "choices": choices, "answer": index})
    if not out:
        raise AlignkitError(f"{file}: no rows")
    return out


def _language(text: str) -> str:
    return "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in text) else "en"


def tokenize_choices(tokenizer, question: str, choices: list[str]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, choice ids) per choice, tokenized separately."""
    prompt, continuation = PROMPT[_language(question)]
    prompt_ids = _encode(tokenizer, prompt.format(question=question))
    return [(prompt_ids, _encode(tokenizer, continuation.format(choice=c))) for c in choices]


def continuation_logps(model, pairs: list[tuple[list[int], list[int]]], batch_size: int) -> list[float]:
    """Summed log-probs of each continuation given its prompt, `batch_size` rows a forward."""
    from alignkit.models.logprobs import SequenceLogps
    from alignkit.models.reference import sequence_logps

    return sequence_logps(SequenceLogps(model.eval()), pairs, 0, batch_size, device=_device(model))


def score_questions(model, tokenizer, questions: list[dict], batch_size: int) -> tuple[list[dict], dict]:
    pairs = [pair for q in questions for pair in tokenize_choices(tokenizer, q["question"], q["choices"])]
    logps = continuation_logps(model, pairs, batch_size)
    results, k = [], 0
    for q in questions:
        n = len(q["choices"])
        sums = logps[k:k + n]
        norms = [s / len(c) for s, (_, c) in zip(sums, pairs[k:k + n])]
        k += n
        pick, pick_norm = max(range(n), key=sums.__getitem__), max(range(n), key=norms.__getitem__)
        results.append({"row": q["row"], "question": q["question"], "answer": LETTERS[q["answer"]],
                        "logps": sums, "logps_per_token": norms, "predicted": LETTERS[pick],
                        "predicted_norm": LETTERS[pick_norm], "correct": pick == q["answer"],
                        "correct_norm": pick_norm == q["answer"]})
    n = len(results)
    metrics = {"accuracy": sum(r["correct"] for r in results) / n,
               "accuracy_norm": sum(r["correct_norm"] for r in results) / n, "items": n}
    return results, metrics


def run_mc(model_path: str, file: str, batch_size: int, limit: int | None) -> tuple[list[dict], dict]:
    from alignkit.models.load import load_model, load_tokenizer

    questions = read_questions(file)[:limit]
    started = time.time()
    tokenizer = load_tokenizer(model_path)
    results, metrics = score_questions(load_model(model_path), tokenizer, questions, batch_size)
    summary = {"command": "eval mc", "model": model_path, "file": file, "seconds": round(time.time() - started, 1),
               "metrics": metrics}
    return results, summary
