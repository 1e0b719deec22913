"""Chat data for language models: conversations as OpenAI-style messages, rendered with the
model's chat template into token ids plus a mask that is true on the tokens the model
should learn to write (the assistant's turns, with their end-of-turn marker).

Sources:
- a JSONL file, one `{"messages": [{"role": "user", "content": "..."}, ...]}` per line;
- `chatterbot`: the English conversations of the PyPI package `chatterbot-corpus` (YAML
  lists of alternating lines, taken as user / assistant turns).

Rendering: a run with a Jinja chat template (tokenizer_config.json's `chat_template`, as
written by `genforge import`) renders it through genforge/pretrained/chat_template.py, as
Hugging Face's `apply_chat_template` does;
a run without one uses a plain "User: ... / Assistant: ..." layout. The assistant part of
turn i is what rendering messages[:i+1] adds after rendering messages[:i] with the
generation prompt, so the mask follows the template whatever its layout.
"""
from __future__ import annotations

import importlib.util
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from genforge.data.batching import step_generator
from genforge.data.registry import DataError

ROLES = ("system", "developer", "user", "assistant")
IGNORE = -100  # cross_entropy's ignore_index: targets that are not learned


def is_chat_data(data: str) -> bool:
    return data == "chatterbot" or data.lower().endswith(".jsonl")


def _check(messages, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: expected {{\"messages\": [{{\"role\": ..., \"content\": ...}}, ...]}}")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: each message needs a role ({', '.join(ROLES)}) and a string "
                            f"content; got {str(m)[:80]}")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: the conversation has no assistant message, so nothing to learn")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def read_jsonl(path: Path) -> list[list[dict]]:
    convs = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {i + 1} is not JSON ({e})") from None
        convs.append(_check(d.get("messages") if isinstance(d, dict) else None, f"{path} line {i + 1}"))
    if not convs:
        raise DataError(f"{path} holds no conversations")
    return convs


def chatterbot() -> list[list[dict]]:
    """The English conversations of chatterbot-corpus, in file order."""
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data=chatterbot needs the chatterbot-corpus package: "
                        "`pip install chatterbot-corpus`")
    import yaml

    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "english"
    convs = []
    for path in sorted(folder.glob("*.yml")):
        for lines in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations", []):
            lines = [str(x).strip() for x in lines if x is not None and str(x).strip()]
            if len(lines) >= 2:
                convs.append([{"role": "user" if i % 2 == 0 else "assistant", "content": t}
                              for i, t in enumerate(lines)])
    return convs


def load_conversations(data: str, val_fraction: float) -> tuple[list, list]:
    """-> (train, val) conversations. The held-out ones are a fixed random sample (seed 0,
    independent of the run's seed), so every run is measured on the same conversations."""
    if data == "chatterbot":
        convs = chatterbot()
    else:
        path = Path(data).expanduser()
        if not path.is_file():
            raise DataError(f"data={data!r}: no such JSONL file of {{\"messages\": [...]}} lines")
        convs = read_jsonl(path)
    order = list(range(len(convs)))
    random.Random(0).shuffle(order)
    n_val = min(len(convs) - 1, max(1, round(len(convs) * val_fraction))) if val_fraction > 0 else 0
    val_ix = set(order[:n_val])
    return ([c for i, c in enumerate(convs) if i not in val_ix],
            [c for i, c in enumerate(convs) if i in val_ix])


class ChatTemplate:
    """Messages -> text: a Jinja chat template (Hugging Face's format) or the plain layout."""

    def __init__(self, jinja_source: str | None = None, special: dict | None = None):
        self.special = {k: v or "" for k, v in (special or {}).items()}
        self._template = None
        if jinja_source:
            # the one Jinja environment of chat templates (the one apply_chat_template uses),
            # shared with `genforge chat` and the server
            from genforge.pretrained.chat_template import compile_template

            self._template = compile_template(jinja_source)

    @classmethod
    def from_tokenizer_config(cls, path: Path | None) -> "ChatTemplate":
        if path is None or not path.is_file():
            return cls()
        d = json.loads(path.read_text(encoding="utf-8"))
        from genforge.pretrained.chat_template import SPECIAL_TOKEN_KEYS, _token_text, pick_template

        return cls(pick_template(d.get("chat_template")),
                   {k: _token_text(d.get(k)) for k in SPECIAL_TOKEN_KEYS})

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        if self._template is not None:
            import jinja2

            try:
                return self._template.render(messages=messages,
                                             add_generation_prompt=add_generation_prompt, **self.special)
            except jinja2.TemplateError as e:  # the template's raise_exception(...)
                raise DataError(f"the chat template refused a conversation: {e}") from None
        out = "".join({"user": "User: ", "assistant": "Assistant: "}.get(m["role"], "")
                      + m["content"] + ("\n\n" if m["role"] in ("system", "developer") else "\n")
                      for m in messages)
        return out + ("Assistant:" if add_generation_prompt else "")

    def segments(self, messages: list[dict]) -> list[tuple[str, bool]]:
        """[(text, learned)]: the rendered conversation cut at the assistant turns."""
        out, done = [], ""
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prompt = self.render(messages[:i], add_generation_prompt=True)
            full = self.render(messages[:i + 1])
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise DataError("the chat template does not render conversations as growing "
                                "prefixes, so assistant turns cannot be located for the loss mask")
            out += [(prompt[len(done):], False), (full[len(prompt):], True)]
            done = full
        rest = self.render(messages)[len(done):]
        if rest:
            out.append((rest, False))
        return [(t, learned) for t, learned in out if t]


def encode_conversation(tok, template: ChatTemplate, messages: list[dict]) -> tuple[list[int], list[bool]]:
    """-> (ids, learned): one flag per id, true on assistant tokens."""
    ids, learned = [], []
    for text, on in template.segments(messages):
        # segments carry their own special tokens: no BOS/EOS added per piece
        piece = (tok.tok.encode(text, add_special_tokens=False).ids if tok.kind == "bpe"
                 else tok.encode(text))
        ids += piece
        learned += [on] * len(piece)
    return ids, learned


@dataclass
class Encoded:
    ids: list[torch.Tensor]  # one (n,) tensor per conversation
    learned: list[torch.Tensor]  # bool, same shapes


def encode_all(tok, template: ChatTemplate, convs: list, context: int) -> Encoded:
    """Conversations -> ids cut to context + 1 tokens (inputs and shifted targets)."""
    ids, learned = [], []
    for c in convs:
        i, m = encode_conversation(tok, template, c)
        ids.append(torch.tensor(i[:context + 1], dtype=torch.long))
        learned.append(torch.tensor(m[:context + 1], dtype=torch.bool))
    return Encoded(ids, learned)


def collate(enc: Encoded, index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) padded to the longest; y is IGNORE where the next token is not learned."""
    t = max(len(enc.ids[i]) for i in index) - 1
    x = torch.zeros(len(index), max(t, 1), dtype=torch.long)
    y = torch.full((len(index), max(t, 1)), IGNORE, dtype=torch.long)
    for row, i in enumerate(index):
        ids, m = enc.ids[i], enc.learned[i]
        n = len(ids) - 1
        if n <= 0:
            continue
        x[row, :n] = ids[:-1]
        y[row, :n] = torch.where(m[1:], ids[1:], torch.full_like(ids[1:], IGNORE))
    return x, y


class RandomConversations:
    """Infinite training batches of random conversations; step s's draw depends only on
    (seed, s), so a resumed run sees the batches it would have seen."""

    def __init__(self, enc: Encoded, batch_size: int, seed: int, start_step: int = 0):
        if not enc.ids:
            raise DataError("no training conversations")
        self.enc, self.batch_size, self.seed, self.step = enc, batch_size, seed, start_step
        self.steps_per_epoch = max(1, len(enc.ids) // batch_size)

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        g = step_generator(self.seed, self.step)
        ix = torch.randint(len(self.enc.ids), (self.batch_size,), generator=g).tolist()
        self.step += 1
        return collate(self.enc, ix)


def sequential(enc: Encoded, batch_size: int, limit_batches: int = 0) -> Iterator:
    n = len(enc.ids)
    starts = range(0, n, batch_size)
    for b, s in enumerate(starts):
        if limit_batches and b >= limit_batches:
            return
        yield collate(enc, list(range(s, min(n, s + batch_size))))
