"""Chat turns -> one prompt string for a text model.

genforge language models are trained on plain text, so they have no chat template of their
own. A run may carry one as `RUN/chat_template.json`:

    {"system": "{content}\\n\\n", "user": "User: {content}\\n",
     "assistant": "Assistant: {content}\\n", "generation": "Assistant:", "stop": ["\\nUser:"]}

Each message is written with the format of its role (`{content}` is replaced by its text;
`developer` counts as `system`), then `generation` starts the reply, and generation stops
at any of `stop`. Without the file the plain template above is used (`PLAIN`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from genforge.train.checkpoint import RunError


@dataclass(frozen=True)
class ChatTemplate:
    system: str = "{content}\n\n"
    user: str = "User: {content}\n"
    assistant: str = "Assistant: {content}\n"
    generation: str = "Assistant:"
    stop: tuple[str, ...] = field(default=("\nUser:",))

    def render(self, messages: list[tuple[str, str]]) -> str:
        """[(role, text), ...] -> the prompt, ending with the generation prefix."""
        parts = []
        for role, text in messages:
            fmt = {"system": self.system, "developer": self.system, "user": self.user,
                   "assistant": self.assistant}[role]
            parts.append(fmt.replace("{content}", text))
        return "".join(parts) + self.generation


PLAIN = ChatTemplate()


def load_chat_template(run_dir: str | Path) -> ChatTemplate:
    path = Path(run_dir) / "chat_template.json"
    if not path.is_file():
        return PLAIN
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path} is not valid JSON ({e})") from None
    known = set(ChatTemplate.__dataclass_fields__)
    if not isinstance(d, dict) or set(d) - known:
        raise RunError(f"{path}: expected an object with keys among {', '.join(sorted(known))}")
    for k, v in d.items():
        ok = all(isinstance(s, str) for s in v) if k == "stop" and isinstance(v, list) else isinstance(v, str)
        if not ok:
            raise RunError(f"{path}: {k!r} must be a string" + (" list" if k == "stop" else ""))
    if "stop" in d:
        d["stop"] = tuple(d["stop"])
    return ChatTemplate(**d)
