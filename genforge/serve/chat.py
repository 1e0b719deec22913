"""Chat turns -> a prompt for a text model: the server uses the one chat abstraction of
`genforge.generate.chat` (the model's own Jinja template for imported runs, the plain
`User:`/`Assistant:` template, or RUN/chat_template.json, for runs trained from scratch),
as `genforge chat` does. Names kept here for callers of the server module."""
from __future__ import annotations

from genforge.generate.chat import PLAIN, ChatFormat, PlainChatTemplate, load_chat_template

ChatTemplate = PlainChatTemplate

__all__ = ["PLAIN", "ChatFormat", "ChatTemplate", "PlainChatTemplate", "load_chat_template"]
