"""Chat with a text run: messages -> prompt token ids through the run's chat template, and
one reply streamed back. The one chat path of `genforge chat` and the server's
`/v1/chat/completions`.

A chat template is chosen from the run (`load_chat_template`):
  - a pretrained (imported) run has the model's own Jinja template in
    RUN/tokenizer_config.json: `genforge.pretrained.chat_template.JinjaChatTemplate`, which
    renders it as transformers' `apply_chat_template` does and stops at the model's
    end-of-turn token;
  - a run trained from scratch learnt plain text, so turns are written as plain text:
    `PlainChatTemplate`, from RUN/chat_template.json when the run has one, else `PLAIN`:

    {"system": "{content}\\n\\n", "user": "User: {content}\\n",
     "assistant": "Assistant: {content}\\n", "generation": "Assistant:", "stop": ["\\nUser:"]}

    Each message is written with the format of its role (`{content}` is replaced by its text;
    `developer` counts as `system`), then `generation` starts the reply, and generation stops
    at any of `stop`.

Both give `prompt_ids(messages, tokenizer)`, `stop` (strings) and `stop_ids` (tokens).
Messages are OpenAI-style dicts {"role": ..., "content": ...}.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

from genforge.generate.sampling import SamplingConfig, Tokenizer, stream_text
from genforge.train.checkpoint import RunError


class ChatFormat(Protocol):
    stop: tuple[str, ...]
    stop_ids: tuple[int, ...]

    def render(self, messages: Sequence[dict]) -> str: ...
    def prompt_ids(self, messages: Sequence[dict], tokenizer: Tokenizer) -> list[int]: ...


def _role_and_text(message) -> tuple[str, str]:
    if isinstance(message, dict):
        return message["role"], message["content"]
    role, text = message  # (role, text) pairs, as older callers pass them
    return role, text


@dataclass(frozen=True)
class PlainChatTemplate:
    system: str = "{content}\n\n"
    user: str = "User: {content}\n"
    assistant: str = "Assistant: {content}\n"
    generation: str = "Assistant:"
    stop: tuple[str, ...] = field(default=("\nUser:",))
    stop_ids: tuple[int, ...] = ()

    def render(self, messages: Sequence[dict]) -> str:
        """The prompt: every message in the format of its role, then the generation prefix."""
        parts = []
        for message in messages:
            role, text = _role_and_text(message)
            fmt = {"system": self.system, "developer": self.system, "user": self.user,
                   "assistant": self.assistant}[role]
            parts.append(fmt.replace("{content}", text))
        return "".join(parts) + self.generation

    def prompt_ids(self, messages: Sequence[dict], tokenizer: Tokenizer) -> list[int]:
        return tokenizer.encode(self.render(messages))


PLAIN = PlainChatTemplate()


def load_chat_template(run_dir: str | Path, tokenizer: Tokenizer | None = None) -> ChatFormat:
    """The run's chat template: its model's own (tokenizer_config.json's `chat_template`;
    needs the run's `tokenizer`), else RUN/chat_template.json, else PLAIN."""
    run_dir = Path(run_dir)
    own = _own_template(run_dir)
    if own is not None:
        from genforge.pretrained.chat_template import JinjaChatTemplate
        from genforge.pretrained.convert import PretrainedError

        if tokenizer is None:
            raise RunError(f"{run_dir} has its model's own chat template; load it with the "
                           "run's tokenizer: load_chat_template(run_dir, tokenizer)")
        try:
            return JinjaChatTemplate(own[0], tokenizer, own[1])
        except PretrainedError as e:
            raise RunError(f"{run_dir / 'tokenizer_config.json'}: {e}") from None
    return _plain_template(run_dir / "chat_template.json")


def _own_template(run_dir: Path) -> tuple[str, dict] | None:
    path = run_dir / "tokenizer_config.json"
    if not path.is_file():
        return None
    from genforge.pretrained.chat_template import pick_template

    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path} is not valid JSON ({e})") from None
    source = pick_template(config.get("chat_template")) if isinstance(config, dict) else None
    return (source, config) if source else None


def _plain_template(path: Path) -> PlainChatTemplate:
    if not path.is_file():
        return PLAIN
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path} is not valid JSON ({e})") from None
    known = set(PlainChatTemplate.__dataclass_fields__) - {"stop_ids"}
    if not isinstance(d, dict) or set(d) - known:
        raise RunError(f"{path}: expected an object with keys among {', '.join(sorted(known))}")
    for k, v in d.items():
        ok = all(isinstance(s, str) for s in v) if k == "stop" and isinstance(v, list) else isinstance(v, str)
        if not ok:
            raise RunError(f"{path}: {k!r} must be a string" + (" list" if k == "stop" else ""))
    if "stop" in d:
        d["stop"] = tuple(d["stop"])
    return PlainChatTemplate(**d)


# ---------------------------------------------------------------------------------------
# one reply


class ContextFull(ValueError):
    """Even the newest turn alone does not fit the context."""


def fit_to_context(template: ChatFormat, tokenizer: Tokenizer, messages: list[dict],
                   limit: int) -> tuple[list[int], int]:
    """(prompt ids, number of messages dropped): the oldest turns after any leading system
    message are dropped until the prompt has at most `limit` tokens. Raises ContextFull when
    the system message and the last turn alone are too long."""
    head = [m for m in messages[:1] if m["role"] in ("system", "developer")]
    body = messages[len(head):]
    # whole turns go: the rest still starts with a user message, as templates that check
    # the alternation of roles (Llama 2, Mistral) require
    starts = [i for i, m in enumerate(body) if i == 0 or m["role"] == "user"]
    for drop in starts:
        ids = template.prompt_ids(head + body[drop:], tokenizer)
        if len(ids) <= limit:
            return ids, drop
    n = len(template.prompt_ids(head + body[-1:], tokenizer)) if body else 0
    raise ContextFull(f"the last message alone makes a prompt of {n} tokens, over the "
                      f"{limit} this model can take (with room left for the reply); "
                      "shorten it" + (" or the system message" if head else ""))


def stream_reply(model: Any, tokenizer: Tokenizer, template: ChatFormat, prompt_ids: list[int],
                 cfg: SamplingConfig, stats: dict | None = None) -> Iterator[str]:
    """The assistant's reply to a rendered prompt, piece by piece; it ends at the template's
    stop strings or end-of-turn tokens (never shown), or at cfg.max_new_tokens."""
    cfg = SamplingConfig(**{**vars(cfg), "stop": list(cfg.stop) + list(template.stop),
                            "stop_ids": list(cfg.stop_ids) + list(template.stop_ids)})
    return stream_text(model, tokenizer, prompt_ids, cfg, stats=stats)


class ChatSession:
    """A conversation with a text run, as `genforge chat` holds it: an optional system
    message, the turns so far, and `reply(text)` streaming the next answer.

    The prompt leaves room for the reply (max_new_tokens, at most half the context); when the
    conversation outgrows that, the oldest whole turns are dropped (`on_note` is told) and
    stay dropped. Turn k samples with seed + k, so a seeded conversation is reproducible
    without every turn drawing the same random numbers."""

    def __init__(self, model: Any, tokenizer: Tokenizer, template: ChatFormat,
                 cfg: SamplingConfig, system: str | None = None, on_note=lambda note: None):
        self.model, self.tokenizer, self.template, self.cfg = model, tokenizer, template, cfg
        self.system = system or None
        self.history: list[dict] = []
        self.on_note = on_note
        self.turns = 0
        context = int(model.context_size)
        self.prompt_limit = context - min(cfg.max_new_tokens, context // 2)

    def reset(self) -> None:
        self.history = []

    def messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history

    def reply(self, text: str) -> Iterator[str]:
        """Stream the answer to the user's `text`; the turn joins the history once the answer
        ends (also when it is cut short: an interrupted answer is what the user saw). Raises
        ContextFull (before any output) when `text` alone is too long."""
        user = {"role": "user", "content": text}
        ids, dropped = fit_to_context(self.template, self.tokenizer, self.messages() + [user],
                                      self.prompt_limit)
        if dropped:
            self.history = self.history[dropped:]
            self.on_note(f"(the conversation outgrew the model's context of "
                         f"{self.model.context_size} tokens: the oldest {dropped} messages "
                         "were dropped)")
        seed = None if self.cfg.seed is None else self.cfg.seed + self.turns
        self.turns += 1
        pieces: list[str] = []
        try:
            for piece in stream_reply(self.model, self.tokenizer, self.template, ids,
                                      SamplingConfig(**{**vars(self.cfg), "seed": seed})):
                pieces.append(piece)
                yield piece
        finally:
            self.history += [user, {"role": "assistant", "content": "".join(pieces)}]
