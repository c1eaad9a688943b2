"""Prompt and answer files for the evaluations (`eval judge`, `eval refusal`, `eval mc`), and greedy answers of a
local model: one reader, so every evaluation names the same file, row and field when a row is bad.
"""

from __future__ import annotations

from alignkit import AlignkitError
from alignkit.data.formats import read_rows


def text_field(record: dict, names: tuple[str, ...], where: str, allow_empty: bool = False) -> str:
    """The first of `names` present in a row, as text; an error naming the row and field otherwise."""
    for name in names:
        value = record.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise AlignkitError(f"{where}: field '{name}': expected text, got {type(value).__name__}")
        if not allow_empty and not value.strip():
            raise AlignkitError(f"{where}: field '{name}': empty")
        return value
    raise AlignkitError(f"{where}: field '{names[0]}': missing" + (f" (or '{names[1]}')" if len(names) > 1 else ""))


def read_prompts(path: str) -> list[tuple[int, str, dict]]:
    """(row number, prompt, record) for each row of a prompts or answers file; duplicate prompts are an error."""
    rows, seen = [], {}
    for number, record in read_rows(path):
        prompt = text_field(record, ("prompt", "question"), f"{path}: row {number}")
        if prompt in seen:
            raise AlignkitError(f"{path}: row {number}: field 'prompt': duplicate of row {seen[prompt]}")
        seen[prompt] = number
        rows.append((number, prompt, record))
    if not rows:
        raise AlignkitError(f"{path}: no rows")
    return rows


def read_answers(path: str) -> dict[str, str]:
    """prompt -> answer from a JSONL answers file (prompt/question and answer/response fields)."""
    return {prompt: text_field(record, ("answer", "response"), f"{path}: row {number}", allow_empty=True)
            for number, prompt, record in read_prompts(path)}


def generate_answers(model_path: str, prompts: list[str], max_new_tokens: int, batch_size: int,
                     sources: list[str] | None = None) -> list[str]:
    """Greedy answers of a local model, each prompt asked as one user turn. `sources` ("file: row n", one per
    prompt) name a prompt whose text holds the tokenizer's control text."""
    from alignkit.data.chat import ControlText
    from alignkit.generation.sample import chat_prompt_ids, generate
    from alignkit.models.load import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_path)
    control = ControlText(tokenizer)
    for i, p in enumerate(prompts):
        control.check(p, sources[i] if sources else f"prompt {i + 1}", "prompt")
    model = load_model(model_path).eval()
    ids = [chat_prompt_ids(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    samples = generate(model, tokenizer, ids, n=1, temperature=0, max_new_tokens=max_new_tokens,
                       batch_size=batch_size)
    return [row[0].text for row in samples]


def collect_answers(answers: list[str], models: list[str], prompts_file: str | None, max_new_tokens: int,
                    batch_size: int) -> tuple[list[str], list[list[str]], list[str]]:
    """(prompts, one answer list per side, side names) from answer files or from models run on a prompts file."""
    if answers and models:
        raise AlignkitError("give --answers files or --model models, not both")
    if models:
        if not prompts_file:
            raise AlignkitError("--model needs --prompts (a JSONL file with a 'prompt' or 'question' field)")
        rows = read_prompts(prompts_file)
        prompts, sources = [p for _, p, _ in rows], [f"{prompts_file}: row {n}" for n, _, _ in rows]
        return prompts, [generate_answers(m, prompts, max_new_tokens, batch_size, sources) for m in models], list(models)
    tables = [read_answers(path) for path in answers]
    prompts = list(tables[0])
    for path, table in zip(answers[1:], tables[1:]):
        missing = [p for p in prompts if p not in table]
        if missing:
            raise AlignkitError(f"{path}: no answer for the prompt '{missing[0][:60]}' of {answers[0]} "
                                f"({len(missing)} missing)")
    return prompts, [[table[p] for p in prompts] for table in tables], list(answers)
