"""The preference row schema: validate a raw record into a PreferenceRow.

Standard rows hold strings; conversational rows hold message lists. `chosen`/`rejected` in a
conversational row are an assistant message, a list of messages, or a plain string (an assistant reply).
Without `prompt`, chosen and rejected are full conversations and the prompt is their shared prefix.
Unpaired rows (KTO) hold one `completion` and a boolean `label` instead of chosen and rejected.
"""

from __future__ import annotations

from dataclasses import dataclass

from alignkit import AlignkitError

ROLES = {"system", "user", "assistant", "tool"}


@dataclass(frozen=True)
class PreferenceRow:
    row: int  # 1-based row number in the source file
    prompt: str | list[dict]
    chosen: str | list[dict]
    rejected: str | list[dict]

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list)


def _messages(value, where: str, field: str) -> list[dict]:
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise AlignkitError(f"{where}: field '{field}': expected a non-empty list of messages")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise AlignkitError(f"{where}: field '{field}[{i}]': a message needs 'role' and 'content'")
        if m["role"] not in ROLES:
            raise AlignkitError(f"{where}: field '{field}[{i}].role': unknown role {m['role']!r}")
        if not isinstance(m["content"], str):
            raise AlignkitError(f"{where}: field '{field}[{i}].content': expected a string")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _split_implicit(chosen, rejected, where: str):
    """Shared prefix of two conversations (or strings) becomes the prompt."""
    if isinstance(chosen, str) and isinstance(rejected, str):
        n = 0
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
        if n > 0 and chosen[n - 1] == " ":  # keep a leading space with the response
            n -= 1
        return chosen[:n], chosen[n:], rejected[n:]
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise AlignkitError(f"{where}: field 'prompt': missing, and chosen and rejected share no prefix")
    return chosen[:n], chosen[n:], rejected[n:]


def parse_row(record: dict, source: str, number: int) -> PreferenceRow:
    where = f"{source}: row {number}"
    for field in ("chosen", "rejected"):
        if field not in record or record[field] is None:
            raise AlignkitError(f"{where}: field '{field}': missing")
    prompt, chosen, rejected = record.get("prompt"), record["chosen"], record["rejected"]

    if prompt is None:
        if isinstance(chosen, str) != isinstance(rejected, str):
            raise AlignkitError(f"{where}: field 'rejected': must be the same kind (string or messages) as 'chosen'")
        if not isinstance(chosen, str):
            chosen, rejected = _messages(chosen, where, "chosen"), _messages(rejected, where, "rejected")
        prompt, chosen, rejected = _split_implicit(chosen, rejected, where)
        if not prompt:
            raise AlignkitError(f"{where}: field 'prompt': missing, and chosen and rejected share no prefix")
    elif isinstance(prompt, str):
        for field, value in (("chosen", chosen), ("rejected", rejected)):
            if not isinstance(value, str):
                raise AlignkitError(f"{where}: field '{field}': expected a string, as 'prompt' is a string")
    else:
        prompt = _messages(prompt, where, "prompt")
        if isinstance(chosen, str):
            chosen = [{"role": "assistant", "content": chosen}]
        if isinstance(rejected, str):
            rejected = [{"role": "assistant", "content": rejected}]
        chosen, rejected = _messages(chosen, where, "chosen"), _messages(rejected, where, "rejected")

    for field, value in (("chosen", chosen), ("rejected", rejected)):
        text = value if isinstance(value, str) else "".join(m["content"] for m in value)
        if not text.strip():
            raise AlignkitError(f"{where}: field '{field}': empty response")
    if chosen == rejected:
        raise AlignkitError(f"{where}: field 'rejected': identical to 'chosen'")
    return PreferenceRow(number, prompt, chosen, rejected)


@dataclass(frozen=True)
class UnpairedRow:
    """One completion with a binary label (KTO's rows; TRL's unpaired preference format)."""

    row: int  # 1-based row number in the source file
    prompt: str | list[dict]
    completion: str | list[dict]
    label: bool  # True: desirable; False: undesirable


def parse_unpaired_row(record: dict, source: str, number: int) -> UnpairedRow:
    """{"prompt", "completion", "label"}: strings (standard), or a message-list prompt with an assistant message,
    a list of messages or a plain string as the completion (conversational). `label` is a JSON boolean."""
    where = f"{source}: row {number}"
    for field in ("prompt", "completion", "label"):
        if field not in record or record[field] is None:
            raise AlignkitError(f"{where}: field '{field}': missing")
    prompt, completion, label = record["prompt"], record["completion"], record["label"]
    if not isinstance(label, bool):
        raise AlignkitError(f"{where}: field 'label': expected true or false, got {label!r}")
    if isinstance(prompt, str):
        if not isinstance(completion, str):
            raise AlignkitError(f"{where}: field 'completion': expected a string, as 'prompt' is a string")
    else:
        prompt = _messages(prompt, where, "prompt")
        if isinstance(completion, str):
            completion = [{"role": "assistant", "content": completion}]
        completion = _messages(completion, where, "completion")
    text = completion if isinstance(completion, str) else "".join(m["content"] for m in completion)
    if not text.strip():
        raise AlignkitError(f"{where}: field 'completion': empty response")
    return UnpairedRow(number, prompt, completion, label)
