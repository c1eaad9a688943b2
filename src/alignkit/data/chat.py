"""Token boundaries: turn a PreferenceRow into prompt and response token ids.

The contract (DESIGN.md):
- Conversational rows: prompt tokens = the tokenized `apply_chat_template(prompt, add_generation_prompt=True)`
  text. Response text = what the rendered full conversation adds after the rendered prompt text, tokenized
  on its own with no special tokens added, up to and including the last end-of-turn token; whatever the
  template renders after that token is excluded. A rendered prompt that is not a prefix of the rendered
  conversation is an error naming the row.
- Standard rows: prompt and response tokenized separately (no special tokens), eos appended to the response.
Prompt and response are never tokenized jointly.
"""

from __future__ import annotations

from dataclasses import dataclass

from alignkit import AlignkitError
from alignkit.data.records import PreferenceRow

# End-of-turn markers of common chat templates, used besides the tokenizer's eos token.
EOT_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>", "</s>")


@dataclass(frozen=True)
class TokenizedPair:
    row: int
    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...]
    # The rejected response's log-prob as its sampler recorded it: (model fingerprint, dtype, token ids, logp),
    # from a pairs file's `metadata.student_logps`. Used as a reference log-prob only when model, dtype and
    # token ids all match (see algos/dpo.py).
    rejected_hint: tuple[str, str, tuple[int, ...], float] | None = None


def end_of_turn_ids(tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in EOT_TOKENS if t in vocab)
    return ids


class ControlText:
    """The rule for chat-control text inside content: refused, never tokenized.

    Every special or added token of the tokenizer (for SmolLM2 `<|im_start|>`, `<|im_end|>`, `<|endoftext|>`, ...)
    is tokenized into its single control id wherever its text appears, so a message, prompt or response holding
    that text could forge a turn or end a response early. Content (any message's text, a string prompt or
    response, a teacher's answer, a served request, a judge's input) that contains one is refused with an error
    naming where it came from; templates themselves (the text the chat template adds) are not content.
    """

    def __init__(self, tokenizer):
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        texts = {t.content if hasattr(t, "content") else str(t) for t in added.values()}
        texts.update(getattr(tokenizer, "all_special_tokens", []) or [])
        self.strings = tuple(sorted((t for t in texts if t), key=len, reverse=True))

    def find(self, text: str) -> str | None:
        """The first control string in `text`, or None."""
        if not isinstance(text, str):
            return None
        hits = [(text.find(t), t) for t in self.strings if t in text]
        return min(hits)[1] if hits else None

    def check_question(self, item) -> str:
        """Check a task item's question (tasks/base.Item), named by its file, row and field when it came from a
        file; returns that name."""
        where = item.meta.get("where", f"task item {item.id}")
        self.check(item.question, where, item.meta.get("field", "question"))
        return where

    def check(self, text, where: str, field: str) -> None:
        """Raise when `text` (a string, a message or a list of messages) holds a control string."""
        if isinstance(text, dict):
            text = [text]
        items = [(field, text)] if isinstance(text, str) else [
            (f"{field}[{i}].content", m.get("content")) for i, m in enumerate(text or []) if isinstance(m, dict)]
        for name, value in items:
            hit = self.find(value)
            if hit is not None:
                raise AlignkitError(f"{where}: field '{name}': contains the tokenizer's control text {hit!r}, "
                                    "which would be read as a special token (remove it or spell it otherwise)")


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _render(tokenizer, messages, **kw) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **kw)


def chat_prompt_ids(tokenizer, messages: list[dict], where: str = "prompt", field: str = "messages") -> list[int]:
    """Token ids of a chat prompt with the generation prompt, exactly as the contract renders prompts. Content with
    the tokenizer's control text is refused (ControlText), naming `where` and `field`."""
    ControlText(tokenizer).check(messages, where, field)
    return _encode(tokenizer, _render(tokenizer, messages, add_generation_prompt=True))


def task_prompt_ids(tokenizer, item) -> list[int]:
    """chat_prompt_ids of a task item's question (tasks/base.Item); control text in a question read from a file is
    refused naming the file, row and field."""
    where = ControlText(tokenizer).check_question(item)
    return chat_prompt_ids(tokenizer, item.messages(), where)


class Tokenize:
    """Callable row -> TokenizedPair for one tokenizer; caches the end-of-turn ids."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.control = ControlText(tokenizer)
        self.eot = end_of_turn_ids(tokenizer)
        if tokenizer.eos_token_id is None:
            raise AlignkitError("tokenizer has no eos token; cannot end standard responses")

    def _conversation_response(self, prompt_text: str, prompt, response, where: str, field: str) -> list[int]:
        full = _render(self.tokenizer, prompt + response)
        if not full.startswith(prompt_text):
            raise AlignkitError(
                f"{where}: field '{field}': the rendered prompt is not a prefix of the rendered conversation"
            )
        ids = _encode(self.tokenizer, full[len(prompt_text):])
        last_eot = max((i for i, t in enumerate(ids) if t in self.eot), default=None)
        return ids if last_eot is None else ids[: last_eot + 1]

    def responses(self, prompt, responses: dict, where: str) -> tuple[list[int], dict[str, list[int]]]:
        """Prompt token ids and the token ids of each named response after it, under the contract: a message-list
        prompt with message-list responses, or a string prompt with string responses. Control text in any of them
        is refused, naming `where` and the field (a preference row's chosen and rejected, an unpaired row's
        completion)."""
        self.control.check(prompt, where, "prompt")
        for field, value in responses.items():
            self.control.check(value, where, field)
        if isinstance(prompt, list):
            if self.tokenizer.chat_template is None:
                raise AlignkitError(f"{where}: field 'prompt': conversational row but the tokenizer has no chat template")
            prompt_text = _render(self.tokenizer, prompt, add_generation_prompt=True)
            prompt_ids = _encode(self.tokenizer, prompt_text)  # = chat_prompt_ids(tokenizer, prompt)
            out = {field: self._conversation_response(prompt_text, prompt, value, where, field)
                   for field, value in responses.items()}
        else:
            prompt_ids = _encode(self.tokenizer, prompt)
            out = {field: _encode(self.tokenizer, value) + [self.tokenizer.eos_token_id]
                   for field, value in responses.items()}
        if not prompt_ids:
            raise AlignkitError(f"{where}: field 'prompt': empty prompt")
        return prompt_ids, out

    def __call__(self, row: PreferenceRow, source: str) -> TokenizedPair:
        where = f"{source}: row {row.row}"
        prompt_ids, out = self.responses(row.prompt, {"chosen": row.chosen, "rejected": row.rejected}, where)
        chosen, rejected = out["chosen"], out["rejected"]
        if chosen == rejected:
            raise AlignkitError(f"{where}: field 'rejected': tokenizes identically to 'chosen'")
        return TokenizedPair(row.row, tuple(prompt_ids), tuple(chosen), tuple(rejected))


class TokenizeSFT:
    """Callable (record, source, number) -> (input_ids, loss_mask) for supervised fine-tuning.

    Rows: {"messages": [...]} (loss on every assistant turn), or {"prompt": ..., "completion": ...} with both
    message lists / an assistant string (loss on the completion's assistant turns), or both plain strings;
    a preference row ({"prompt", "chosen", ...}) trains on its chosen response.
    Conversations follow the token-boundary contract turn by turn: the text before each trained assistant
    turn is the rendered conversation so far with the generation prompt; the turn is what the rendered
    conversation adds after it, up to and including its end-of-turn token. Each segment is tokenized on its
    own, never across a boundary. Plain strings: prompt and completion tokenized separately, eos appended.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.control = ControlText(tokenizer)
        self.eot_texts = [t for t in EOT_TOKENS if t in tokenizer.get_vocab()]
        if tokenizer.eos_token and tokenizer.eos_token not in self.eot_texts:
            self.eot_texts.append(tokenizer.eos_token)

    def __call__(self, record: dict, source: str, number: int) -> tuple[list[int], list[bool]]:
        from alignkit.data.records import _messages

        where = f"{source}: row {number}"
        for field in ("messages", "prompt", "completion", "chosen"):
            if isinstance(record.get(field), (str, list, dict)):
                self.control.check(record[field], where, field)
        if "messages" in record:
            messages = _messages(record["messages"], where, "messages")
            trained = {i for i, m in enumerate(messages) if m["role"] == "assistant"}
            field = "messages"
        elif "prompt" in record and ("completion" in record or "chosen" in record):
            # A preference row trains on its chosen response (SFT on chosen, as before DPO).
            prompt, completion = record["prompt"], record.get("completion", record.get("chosen"))
            if isinstance(prompt, str) and isinstance(completion, str):
                return self._standard(prompt, completion, where)
            prompt = _messages(prompt, where, "prompt")
            if isinstance(completion, str):
                completion = [{"role": "assistant", "content": completion}]
            completion = _messages(completion, where, "completion")
            messages = prompt + completion
            trained = {i for i in range(len(prompt), len(messages)) if messages[i]["role"] == "assistant"}
            field = "completion"
        else:
            raise AlignkitError(f"{where}: field 'messages': missing (or give 'prompt' and 'completion')")
        if not trained:
            raise AlignkitError(f"{where}: field '{field}': no assistant message to train on")
        if self.tokenizer.chat_template is None:
            raise AlignkitError(f"{where}: field '{field}': conversational row but the tokenizer has no chat template")
        ids: list[int] = []
        mask: list[bool] = []
        consumed = ""
        for i in sorted(trained):
            before = _render(self.tokenizer, messages[:i], add_generation_prompt=True)
            after = _render(self.tokenizer, messages[: i + 1])
            if not before.startswith(consumed) or not after.startswith(before):
                raise AlignkitError(f"{where}: field '{field}[{i}]': the rendered conversation before this turn is "
                                    "not a prefix of the rendered conversation with it")
            turn = after[len(before):]
            cut = max((turn.rfind(t) + len(t) for t in self.eot_texts if t in turn), default=len(turn))
            for text, train in ((before[len(consumed):], False), (turn[:cut], True)):
                part = _encode(self.tokenizer, text)
                ids += part
                mask += [train] * len(part)
            consumed = before + turn[:cut]
        return ids, mask

    def _standard(self, prompt: str, completion: str, where: str):
        if self.tokenizer.eos_token_id is None:
            raise AlignkitError(f"{where}: tokenizer has no eos token; cannot end the completion")
        p = _encode(self.tokenizer, prompt)
        c = _encode(self.tokenizer, completion) + [self.tokenizer.eos_token_id]
        return p + c, [False] * len(p) + [True] * len(c)
