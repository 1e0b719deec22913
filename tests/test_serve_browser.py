"""The web playground in a real browser: Playwright driving Debian's Chromium against a live
server. Needs /usr/bin/chromium (`apt-get install -y --no-install-recommends chromium`)."""
from __future__ import annotations

import shutil

import pytest

from genforge.serve.engine import Limits
from serving import LiveServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed "
                                "(apt-get install -y --no-install-recommends chromium)")


@pytest.fixture(scope="module")
def live(serve_runs):
    runs = [serve_runs[k] for k in ("tiny-gpt", "tiny-vae", "tiny-digits")]
    with LiveServer(runs, Limits(workers=2, max_tokens=4000)) as s:
        yield s


@pytest.fixture(scope="module")
def pw():
    """One Playwright per module: its sync API refuses a second one while the first is open."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def page(live, pw):
    browser = pw.chromium.launch(executable_path=CHROMIUM,
                               args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
    pg = browser.new_page()
    external = []
    pg.on("request", lambda r: None if r.url.startswith(live.url) or r.url.startswith("data:")
          else external.append(r.url))
    pg.goto(live.url + "/")
    pg.wait_for_function("document.querySelectorAll('#complete-model option').length > 0 "
                         "&& document.getElementById('complete-model').value !== ''")
    pg.external_requests = external
    yield pg
    browser.close()


def test_completion_streams_into_the_page(page):
    page.click("#tab-complete")
    page.fill("#complete-prompt", "ROMEO:")
    page.fill("#complete-max", "1500")
    # count how many times the generated text changed while the answer was arriving
    page.evaluate("""() => {
        window.__updates = 0;
        const target = document.getElementById('complete-output');
        new MutationObserver(() => { window.__updates++; })
            .observe(target, {subtree: true, childList: true, characterData: true});
    }""")
    page.click("#complete-go")
    page.wait_for_selector("#complete-output.done", timeout=60_000)
    text = page.text_content("#complete-generated")
    assert len(text) == 1500  # char-level: one character per token
    assert page.evaluate("window.__updates") > 10  # shown piece by piece, not at once
    assert "first token" in page.text_content("#complete-status")
    assert page.external_requests == []


def test_chat_round_trip(page):
    page.click("#tab-chat")
    page.fill("#chat-max", "30")
    page.fill("#chat-input", "Good morrow!")
    page.click("#chat-send")
    page.wait_for_selector(".msg.assistant.done", timeout=60_000)
    assert page.text_content(".msg.user") == "Good morrow!"
    assert len(page.text_content(".msg.assistant.done")) > 0
    assert "error" not in (page.get_attribute("#chat-status", "class") or "")


def test_chat_error_is_shown(page):
    page.click("#tab-chat")
    page.fill("#chat-input", "\u263a unknown character")
    page.click("#chat-send")
    page.wait_for_selector("#chat-status.error", timeout=30_000)
    assert "never saw" in page.text_content("#chat-status")


def test_image_generation_renders(page):
    page.click("#tab-images")
    page.select_option("#image-model", "tiny-vae")
    page.fill("#image-prompt", "sneaker")
    page.fill("#image-n", "4")
    page.click("#image-go")
    page.wait_for_function("document.querySelectorAll('#image-results img').length === 4", timeout=60_000)
    page.wait_for_function("[...document.querySelectorAll('#image-results img')].every(i => i.complete && i.naturalWidth > 0)")
    sizes = page.evaluate("[...document.querySelectorAll('#image-results img')].map(i => [i.naturalWidth, i.naturalHeight])")
    assert sizes == [[28, 28]] * 4
    assert "sneaker" in page.text_content("#image-status")


def test_image_classification_upload(page, tmp_path):
    from PIL import Image

    img = Image.new("L", (8, 8), 0)
    for i in range(8):
        img.putpixel((3, i), 255)
        img.putpixel((4, i), 255)
    path = tmp_path / "one.png"
    img.save(path)
    page.click("#tab-classify")
    page.select_option("#classify-model", "tiny-digits")
    page.set_input_files("#classify-file", str(path))
    page.click("#classify-go")
    page.wait_for_selector("#classify-label", timeout=30_000)
    label = page.text_content("#classify-label")
    assert label in [str(d) for d in range(10)]
    assert len(page.query_selector_all("#classify-results .bar")) == 5


# ---------------------------------------------------------------------------------------
# the chat tab with an imported pretrained model: its own chat template, stop at its end of
# turn (slow: the import dequantizes 135M parameters, and the model answers on the CPU)


@pytest.fixture(scope="module")
def smollm2_page(tmp_path_factory, pw):
    from genforge.config import ConfigError
    from genforge.pretrained import import_run
    from genforge.pretrained.sources import packaged_path

    try:
        gguf = packaged_path("smollm2")
    except ConfigError as e:
        pytest.skip(str(e))
    run = tmp_path_factory.mktemp("imported") / "smollm2"
    import_run(gguf, run, log=lambda *_: None)
    with LiveServer([run], Limits(workers=1)) as live:
        browser = pw.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        pg = browser.new_page()
        pg.goto(live.url + "/")
        pg.wait_for_function("document.getElementById('chat-model').value === 'smollm2'")
        yield pg
        browser.close()


@pytest.mark.slow
def test_chat_tab_with_an_imported_model(smollm2_page):
    page = smollm2_page
    page.click("#tab-chat")
    page.fill("#chat-max", "40")
    page.fill("#chat-temp", "0")
    page.fill("#chat-input", "What is the capital of France?")
    page.click("#chat-send")
    page.wait_for_selector(".msg.assistant.done", timeout=300_000)
    answer = page.text_content(".msg.assistant.done")
    assert "Paris" in answer and "<|im_end|>" not in answer and "<|im_start|>" not in answer
    assert "error" not in (page.get_attribute("#chat-status", "class") or "")


def test_audio_tab_is_hidden_without_audio_runs(page):
    assert page.is_hidden("#tab-audio")
    # and no audio run turns up among the classifiers
    assert "audio" not in page.evaluate("[...document.querySelectorAll('#classify-model option')].map(o => o.value).join()")


# ---------------------------------------------------------------------------------------
# the audio tab (issue 22): a clip uploaded or recorded -> POST /v1/audio/transcriptions ->
# the label; a digit word -> POST /v1/audio/speech -> an <audio> player with the WAV. Tiny
# runs of the audio recipes' TEST_CONFIGS sizes on real FSDD clips, trained once per module.


def _fsdd():
    import os
    from pathlib import Path

    d = Path(os.environ.get("GENFORGE_DATA", "")) / "fsdd" / "recordings"
    if not d.is_dir():
        pytest.skip("GENFORGE_DATA with fsdd/ is needed")
    return d


@pytest.fixture(scope="module")
def audio_page(tmp_path_factory, pw):
    from genforge.config import make_config
    from genforge.recipes import get_recipe
    from genforge.train.trainer import fit

    _fsdd()
    root = tmp_path_factory.mktemp("audio-runs")
    for name, rname, key in (("digits-asr", "audio-classify", "cnn"), ("digits-tts", "audio-generate", "vae")):
        recipe = get_recipe(rname)
        fit(rname, make_config(recipe, recipe.TEST_CONFIGS[key]), root / name, log=lambda s: None)
    with LiveServer([root / "digits-asr", root / "digits-tts"], Limits(workers=1)) as live:
        # a fake microphone (a beeping tone) granted without a prompt, for the Record button
        browser = pw.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                          "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                                          "--autoplay-policy=no-user-gesture-required"])
        pg = browser.new_page()
        external = []
        pg.on("request", lambda r: None if r.url.startswith((live.url, "data:", "blob:")) else external.append(r.url))
        pg.goto(live.url + "/")
        pg.wait_for_function("document.getElementById('asr-model').value === 'digits-asr' "
                             "&& document.getElementById('tts-model').value === 'digits-tts'")
        pg.external_requests = external
        yield pg
        browser.close()


def _classes():
    from genforge.recipes import get_recipe

    return get_recipe("audio-classify").load_audio_set("fsdd", "", 8000, 8000).classes


def test_audio_tab_transcribes_an_uploaded_clip(audio_page):
    page = audio_page
    assert page.is_visible("#tab-audio")
    page.click("#tab-audio")
    page.set_input_files("#asr-file", str(_fsdd() / "7_theo_0.wav"))
    page.click("#asr-go")
    page.wait_for_selector("#asr-label", timeout=30_000)
    assert page.text_content("#asr-label") in _classes()
    assert len(page.query_selector_all("#asr-results .bar")) == 3
    assert "error" not in (page.get_attribute("#asr-status", "class") or "")
    # a file that is not audio: the server's one clear line, shown as an error
    page.set_input_files("#asr-file", files=[{"name": "notes.wav", "mimeType": "audio/wav",
                                              "buffer": b"GIF89a not a sound"}])
    page.click("#asr-go")
    page.wait_for_selector("#asr-status.error", timeout=30_000)
    assert "neither a WAV nor a FLAC" in page.text_content("#asr-status")
    assert page.external_requests == []


def test_audio_tab_records_from_the_microphone(audio_page):
    page = audio_page
    page.click("#tab-audio")
    page.evaluate("document.getElementById('asr-results').innerHTML = ''")
    page.click("#asr-record")
    page.wait_for_function("document.getElementById('asr-record').textContent === 'Stop'", timeout=10_000)
    page.wait_for_timeout(1200)
    page.click("#asr-record")
    page.wait_for_function("document.getElementById('asr-status').textContent.startsWith('recorded')",
                           timeout=15_000)
    page.click("#asr-go")
    page.wait_for_selector("#asr-label", timeout=30_000)
    assert page.text_content("#asr-label") in _classes()
    status = page.text_content("#asr-status")
    assert "error" not in (page.get_attribute("#asr-status", "class") or ""), status


def test_audio_tab_speaks_a_digit_into_a_player(audio_page):
    page = audio_page
    page.click("#tab-audio")
    assert "seven" in page.evaluate("[...document.querySelectorAll('#tts-classes option')].map(o => o.value)")
    page.fill("#tts-input", "seven")
    page.fill("#tts-seed", "1")
    page.click("#tts-go")
    page.wait_for_selector("#audio-player", timeout=30_000)
    # the browser decodes the returned WAV: 15 frames of 256 samples at 8 kHz
    page.wait_for_function("document.getElementById('audio-player').readyState >= 1", timeout=15_000)
    duration = page.evaluate("document.getElementById('audio-player').duration")
    assert abs(duration - 15 * 256 / 8000) < 0.01
    head = page.evaluate("""async () => {
        const b = await (await fetch(document.getElementById('audio-player').src)).arrayBuffer();
        return String.fromCharCode(...new Uint8Array(b.slice(0, 4))) + String.fromCharCode(...new Uint8Array(b.slice(8, 12)));
    }""")
    assert head == "RIFFWAVE"
    assert "seven" in page.text_content("#tts-status")
    # a word the model has no label for: the server's message, shown as an error
    page.fill("#tts-input", "hello")
    page.click("#tts-go")
    page.wait_for_selector("#tts-status.error", timeout=30_000)
    assert "names no label" in page.text_content("#tts-status")
    assert page.external_requests == []
