"""A pretrained model's own chat template (Jinja), rendered as transformers'
`apply_chat_template` renders it, so the model sees exactly the text it was fine-tuned on.

Chat templates ship with the weights (the GGUF's `tokenizer.chat_template`, a Hugging Face
folder's tokenizer_config.json / chat_template.jinja) and are code written by the model's
authors: they run in Jinja's immutable sandbox, with the environment the templates are
written against (transformers' `chat_template_utils`): `trim_blocks` and `lstrip_blocks`,
the `loopcontrols` extension (`{% break %}`), `raise_exception(msg)`, `strftime_now(fmt)`, a
`tojson` that does not HTML-escape, `{% generation %}` blocks (rendered as their body), and
the special tokens (`bos_token`, `eos_token`, ...) as variables.

The rendered text is tokenized with special tokens matched whole and nothing added (no
second BOS: the template writes its own), as `apply_chat_template(tokenize=True)` does.
Generation ends at the model's end-of-turn token: its EOS and the end-of-turn markers of the
common template families that its vocabulary has.
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Sequence

from genforge.pretrained.convert import PretrainedError

# end-of-turn markers of the common chat formats: ChatML (SmolLM, Qwen), Llama 3, Phi-3,
# Gemma, and the plain end-of-text / end-of-sequence tokens
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>",
               "<|endoftext|>", "</s>")
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token",
                      "cls_token", "mask_token")


def _raise_exception(message: str):
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # Jinja's own tojson HTML-escapes (<, >, &, '): wrong for a prompt
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _generation_extension():
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks;
    rendering a prompt only needs its body."""
    from jinja2 import nodes
    from jinja2.ext import Extension

    class Generation(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body).set_lineno(lineno)

    return Generation


def compile_template(source: str):
    """The Jinja template object, or one PretrainedError naming the syntax error."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True,
        extensions=[_generation_extension(), "jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise PretrainedError(f"the chat template has a syntax error (line {e.lineno}: "
                              f"{e.message}); fix chat_template in tokenizer_config.json") from None


def pick_template(chat_template: str | list | None) -> str | None:
    """tokenizer_config's `chat_template`: a string, or a list of named templates (then
    the one named "default", as transformers picks it)."""
    if chat_template is None or isinstance(chat_template, str):
        return chat_template or None
    named = {t.get("name"): t.get("template") for t in chat_template if isinstance(t, dict)}
    return named.get("default")


class JinjaChatTemplate:
    """A model's own chat template: `render(messages)` -> prompt text, `prompt_ids(messages)`
    -> token ids, `stop_ids` (end-of-turn tokens), `stop` (no stop strings: the end is a
    token)."""

    stop: tuple[str, ...] = ()

    def __init__(self, source: str, tokenizer, special_tokens: dict[str, Any] | None = None):
        self.source = source
        self.template = compile_template(source)
        hf = getattr(tokenizer, "tok", None)  # the `tokenizers.Tokenizer` of a BPE tokenizer
        if hf is None:
            raise PretrainedError("a Jinja chat template needs the model's own tokenizer "
                                  "(RUN/tokenizer.json of an imported run)")
        self.tokenizer = hf
        special = special_tokens or {}
        self.special_tokens = {k: _token_text(special.get(k)) for k in SPECIAL_TOKEN_KEYS
                               if _token_text(special.get(k)) is not None}
        eos = self.special_tokens.get("eos_token")
        ids = [hf.token_to_id(t) for t in ((eos,) if eos else ()) + END_OF_TURN]
        self.stop_ids = tuple(dict.fromkeys(i for i in ids if i is not None))

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        import jinja2

        try:
            # OpenAI's `developer` role is its newer name for `system`, which templates know
            turns = [{**m, "role": "system"} if m.get("role") == "developer" else dict(m)
                     for m in messages]
            return self.template.render(messages=turns,
                                        add_generation_prompt=add_generation_prompt,
                                        **self.special_tokens)
        except jinja2.TemplateError as e:  # raise_exception(...) or a template bug
            raise ValueError(f"the model's chat template refused these messages: {e}") from None

    def prompt_ids(self, messages: Sequence[dict], tokenizer=None) -> list[int]:
        return self.tokenizer.encode(self.render(messages), add_special_tokens=False).ids


def _token_text(tok) -> str | None:
    """A special token as tokenizer_config spells it: a string or an AddedToken dict."""
    if isinstance(tok, dict):
        return tok.get("content")
    return tok if isinstance(tok, str) else None
