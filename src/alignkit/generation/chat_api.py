"""The chat-completions request `alignkit serve` accepts, checked field by field: each refusal an ApiError (a 4xx
in OpenAI's error format naming the parameter at fault), and the sampling settings a valid request asks for.
"""

from __future__ import annotations

from dataclasses import dataclass

from alignkit.httpd import BadRequest

MAX_TOKENS_LIMIT = 4096  # default of --max-tokens-limit
MAX_N = 64  # choices per request
ROLES = ("system", "user", "assistant")


class ApiError(BadRequest):
    """A refused request in OpenAI's terms: the HTTP status, a one-line message, the parameter at fault (a
    JSON path such as `messages[1].content`) and a machine-readable code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(status, message)
        self.param, self.code = param, code


@dataclass(frozen=True)
class Sampling:
    """The settings requests must share to be generated in one batch."""

    temperature: float
    top_p: float
    max_tokens: int
    n: int
    seed: int


@dataclass
class ChatRequest:
    messages: list[dict]
    temperature: float
    top_p: float
    max_tokens: int | None  # None: not given, the server's default (shortened to fit the context)
    max_tokens_param: str  # which name the client used: max_completion_tokens or max_tokens
    n: int
    seed: int
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the token counts


def _given(req: dict, name: str, default):
    """A field's value; absent and null both mean the default, as in OpenAI's API."""
    value = req.get(name)
    return default if value is None else value


def _number(req: dict, name: str, default: float, lo: float, hi: float) -> float:
    value = _given(req, name, default)
    # `lo <= value <= hi` is False for NaN and the infinities too (parse_json_object refuses their literals,
    # but 1e999 still parses as inf).
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ApiError(400, f"'{name}' must be a number from {lo} to {hi}", name)
    return float(value)


def _integer(req: dict, name: str, default: int, lo: int, hi: int) -> int:
    value = _given(req, name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ApiError(400, f"'{name}' must be an integer from {lo} to {hi}", name)
    return value


def _model(req: dict, served: str) -> None:
    """The model asked for must be the one served; leaving `model` out is allowed (there is only one)."""
    model = req.get("model")
    if model is None:
        return
    if not isinstance(model, str):
        raise ApiError(400, "'model' must be a string", "model")
    if model != served:
        raise ApiError(404, f"The model `{model}` does not exist.", "model", "model_not_found")


def _messages(req: dict, control) -> list[dict]:
    """The chat, each message checked: a known role, string content, and no chat-control text in the content
    (the tokenizer would read `<|im_end|><|im_start|>system` as a real end of turn and a forged new one)."""
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ApiError(400, f"messages[{i}] must be an object with a role and content", f"messages[{i}]")
        if m.get("role") not in ROLES:
            raise ApiError(400, f"messages[{i}].role must be one of {', '.join(ROLES)}", f"messages[{i}].role")
        if not isinstance(m.get("content"), str):
            raise ApiError(400, f"messages[{i}].content must be a string", f"messages[{i}].content")
        hit = control.find(m["content"])
        if hit is not None:
            raise ApiError(400, f"messages[{i}].content contains the chat-control text {hit!r}, which would be "
                                "read as a special token; remove it or spell it otherwise", f"messages[{i}].content")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _max_tokens(req: dict, limit: int) -> tuple[int | None, str]:
    """(max_tokens or None when not given, the name the client used); max_completion_tokens wins, as in
    OpenAI's API. Over the server's limit is refused, not shortened: the client would not know."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = req.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ApiError(400, f"'{name}' must be a positive integer", name)
        if value > limit:
            raise ApiError(400, f"'{name}' is {value}, over this server's limit of {limit} tokens "
                                "(alignkit serve --max-tokens-limit)", name)
        return value, name
    return None, "max_tokens"


def _stream(req: dict) -> tuple[bool, bool]:
    """(stream, include_usage)."""
    stream = _given(req, "stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", "stream")
    options = _given(req, "stream_options", {})
    if not isinstance(options, dict) or (options and not stream):
        raise ApiError(400, "'stream_options' must be an object, and only with \"stream\": true", "stream_options")
    include_usage = _given(options, "include_usage", False)
    if not isinstance(include_usage, bool):
        raise ApiError(400, "'stream_options.include_usage' must be true or false", "stream_options.include_usage")
    return stream, include_usage


def parse_chat_request(req: dict, served: str, control, max_tokens_limit: int) -> ChatRequest:
    """A chat completion request (a parsed JSON object) -> its checked fields, or ApiError."""
    _model(req, served)
    messages = _messages(req, control)
    max_tokens, max_tokens_param = _max_tokens(req, max_tokens_limit)
    stream, include_usage = _stream(req)
    return ChatRequest(messages=messages, temperature=_number(req, "temperature", 1.0, 0, 2),
                       top_p=_number(req, "top_p", 1.0, 0, 1), max_tokens=max_tokens,
                       max_tokens_param=max_tokens_param, n=_integer(req, "n", 1, 1, MAX_N),
                       seed=_integer(req, "seed", 0, -(1 << 63), (1 << 63) - 1), stream=stream,
                       include_usage=include_usage)


def fit_context(prompt_tokens: int, chat: ChatRequest, default: int, context: int | None) -> int:
    """max_tokens for this prompt. Prompt and answer must fit in the model's context together: a max_tokens
    the client asked for that does not fit is refused; the server's default is shortened to fit."""
    if context is None:
        return chat.max_tokens or default
    room = context - prompt_tokens
    if room < 1:
        raise ApiError(400, f"the prompt is {prompt_tokens} tokens, which leaves no room for an answer in this "
                            f"model's context of {context} tokens", "messages", "context_length_exceeded")
    if chat.max_tokens is None:
        return min(default, room)
    if chat.max_tokens > room:
        raise ApiError(400, f"the prompt ({prompt_tokens} tokens) plus '{chat.max_tokens_param}' "
                            f"({chat.max_tokens}) is over this model's context of {context} tokens; ask for at "
                            f"most {room}", chat.max_tokens_param, "context_length_exceeded")
    return chat.max_tokens


def context_length(model, tokenizer) -> int | None:
    """Tokens the model can attend to (prompt and answer together): the smaller of its config's position
    limit and the tokenizer's model_max_length, whichever are known (transformers writes a huge number for
    an unknown model_max_length)."""
    config = getattr(model, "config", None)
    limits = [getattr(config, name, None) for name in ("max_position_embeddings", "n_positions")]
    limits.append(getattr(tokenizer, "model_max_length", None))
    known = [x for x in limits if isinstance(x, int) and not isinstance(x, bool) and 0 < x < 10_000_000]
    return min(known) if known else None
