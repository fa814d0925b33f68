"""The demo page in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium): upload the
bundled example image, see its tiling drawn (the thumbnail tile too), ask, watch the answer stream in piece
by piece, read the timing breakdown, ask a follow-up; both answers equal the Pipeline's. Without an image the
page says the question goes without one, and answers as the Pipeline does without one. The page has a
favicon. A screenshot is saved (AERIE_SCREENSHOT=PATH keeps a copy, e.g. docs/demo.png; AERIE_DEMO_ENGINE=DIR
runs the page on another engine, e.g. a demo model)."""

from __future__ import annotations

import os
import shutil
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from runtime.demo.routes import demo_routes
from runtime.pipeline import Pipeline
from runtime.preprocess import preprocess_image
from runtime.sampling import SamplingParams
from serving_helpers import DecoderGate, running_server
from tiny_engines import built_engine

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")

EXAMPLE = Path(__file__).resolve().parents[1] / "runtime" / "demo" / "static" / "example.png"
FIRST, SECOND = "What colour is the shape?", "What shape is this?"
MAX_TOKENS = 64  # the page's default
# Candidates for the question whose answer is watched as it streams: the first the engine answers in more
# than four tokens (a trained demo model answers its own questions in a word).
LONG_ANSWERS = (FIRST, "Describe the image in detail.", "Write a story about this picture.")
STEP_DELAY = 0.02  # seconds added to every decode step, so the pieces arrive apart as on a larger model


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory) -> Path:
    chosen = os.environ.get("AERIE_DEMO_ENGINE")
    return Path(chosen) if chosen else built_engine("eagle2_5", tmp_path_factory)[1]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,860", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait(driver, condition, timeout: float = 90):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def ask(driver, question: str) -> tuple[str, list[str]]:
    """Type and send a question; wait for the answer to finish. Returns its text and every text the answer's
    bubble showed on the way, in order (one per change the page made to it)."""
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, "question")
    box.clear()
    box.send_keys(question)
    done_before = len(driver.find_elements(By.CSS_SELECTOR, ".message.assistant[data-done='true']"))
    driver.execute_script("""
        window.__shown = [];
        new MutationObserver(() => {
            const answers = document.querySelectorAll('.message.assistant .text');
            const text = answers.length ? answers[answers.length - 1].textContent : '';
            if (text && text !== window.__shown[window.__shown.length - 1]) window.__shown.push(text);
        }).observe(document.getElementById('messages'), {subtree: true, characterData: true, childList: true});""")
    driver.find_element(By.ID, "send").click()
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".message.assistant[data-done='true']")) > done_before
         or d.find_elements(By.CSS_SELECTOR, ".message.error"))
    errors = driver.find_elements(By.CSS_SELECTOR, ".message.error")
    assert not errors, errors[0].get_attribute("textContent")
    answer = driver.find_elements(By.CSS_SELECTOR, ".message.assistant .text")[-1]
    return answer.get_attribute("textContent"), driver.execute_script("return window.__shown")


def canvas_alpha(driver, x: int, y: int) -> int:
    return driver.execute_script(
        f"return document.getElementById('canvas').getContext('2d').getImageData({x}, {y}, 1, 1).data[3]")


def test_demo_page_chat_with_tiles_and_timings(engine_dir, browser, tmp_path):
    from selenium.webdriver.common.by import By

    reference = Pipeline(engine_dir, max_batch=1, threads=1)
    image = Image.open(EXAMPLE).convert("RGB")
    with running_server(engine_dir, routes=demo_routes()) as server:
        browser.get(server.url + "/")
        wait(browser, lambda d: "tiny" in d.find_element(By.ID, "model").text)
        browser.find_element(By.ID, "file").send_keys(str(EXAMPLE))
        wait(browser, lambda d: d.find_element(By.ID, "tiling").get_attribute("data-ready") == "true")
        tiling = browser.find_element(By.ID, "tiling").text
        inputs = preprocess_image(image, reference.spec)
        assert f"{inputs.num_tokens} image tokens" in tiling and f"{image.width}×{image.height} px" in tiling
        layout = browser.execute_script("return state.layout")
        canvas = browser.find_element(By.ID, "canvas")
        assert canvas.is_displayed() and canvas.size["width"] > 100
        if reference.spec.kind == "dynamic_tiles":
            cols, rows = inputs.grid
            assert layout["tiles"] == [list(box) for box in inputs.tiles[: cols * rows]]
            assert layout["thumbnail"] == (len(inputs.tiles) > cols * rows) == ("thumbnail" in tiling)
        if layout["thumbnail"]:  # drawn beside the image, as the summary says
            x, y, w, h = (int(v) for v in canvas.get_attribute("data-thumbnail").split(","))
            assert canvas_alpha(browser, x + w // 2, y + h // 2) == 255, "the thumbnail tile is not drawn"
            assert canvas_alpha(browser, x - 3, y + h // 2) == 0, "the thumbnail should stand apart from the image"
            assert x + w <= int(canvas.get_attribute("width"))

        answer, _ = ask(browser, FIRST)
        want = reference.run(FIRST, [image], SamplingParams(max_new_tokens=MAX_TOKENS))
        assert answer == want.text
        timings = browser.find_elements(By.CSS_SELECTOR, ".timings")[-1].text
        for label in ("preprocess", "vision", "prefill", "decode", "first token", "total (browser)"):
            assert label in timings
        assert f"({want.prompt_tokens} tokens)" in timings
        n = len(want.token_ids)
        assert (f"({n} tokens, " if n > 1 else "(1 token, no decode step)") in timings

        follow_up, _ = ask(browser, SECOND)
        turns = [("user", f"<image>\n{FIRST}"), ("assistant", want.text), ("user", SECOND)]
        assert follow_up == reference.run(turns, [image], SamplingParams(max_new_tokens=MAX_TOKENS)).text
        assert "still sees the image" in browser.find_element(By.ID, "image-hint").text

        shot = tmp_path / "demo.png"
        assert browser.save_screenshot(str(shot))
        with Image.open(shot) as picture:
            assert picture.size[0] >= 1000 and len(picture.getcolors(1 << 20) or range(1 << 20)) > 50
        if os.environ.get("AERIE_SCREENSHOT"):
            shutil.copy(shot, os.environ["AERIE_SCREENSHOT"])


def test_demo_page_refuses_a_bad_upload(browser, tmp_path, engine_dir):
    from selenium.webdriver.common.by import By

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with running_server(engine_dir, routes=demo_routes()) as server:
        browser.get(server.url + "/")
        browser.find_element(By.ID, "file").send_keys(str(bad))
        wait(browser, lambda d: d.find_element(By.ID, "tiling").text.startswith("refused:"))
        assert "damaged or truncated" in browser.find_element(By.ID, "tiling").text or \
            "not an image" in browser.find_element(By.ID, "tiling").text


def test_demo_page_streams_the_answer_piece_by_piece(engine_dir, browser):
    """The answer's bubble shows growing prefixes of the answer before the whole of it, one per piece the
    server sent (with a short pause after every decode step, so the browser does not get them all at once)."""
    from selenium.webdriver.common.by import By

    reference = Pipeline(engine_dir, max_batch=1, threads=1)
    image = Image.open(EXAMPLE).convert("RGB")
    params = SamplingParams(max_new_tokens=MAX_TOKENS)
    question = next((q for q in LONG_ANSWERS if len(reference.run(q, [image], params).token_ids) > 4), None)
    assert question, "none of the questions gets a long enough answer from this engine to watch it stream"
    want = reference.run(question, [image], params)
    with running_server(engine_dir, routes=demo_routes()) as server:
        DecoderGate(server.pipeline, delay=STEP_DELAY)
        browser.get(server.url + "/")
        browser.find_element(By.ID, "file").send_keys(str(EXAMPLE))
        wait(browser, lambda d: d.find_element(By.ID, "tiling").get_attribute("data-ready") == "true")
        answer, shown = ask(browser, question)
    assert answer == want.text
    assert shown[-1] == want.text and all(want.text.startswith(text) for text in shown)
    assert len(shown) >= min(len(want.token_ids), 10) // 2, f"{len(shown)} updates for {len(want.token_ids)} tokens"


def test_demo_page_says_a_question_goes_without_an_image(engine_dir, browser):
    from selenium.webdriver.common.by import By

    reference = Pipeline(engine_dir, max_batch=1, threads=1)
    with running_server(engine_dir, routes=demo_routes()) as server:
        browser.get(server.url + "/")
        hint = browser.find_element(By.ID, "image-hint")
        assert "the question goes without one" in hint.text
        answer, _ = ask(browser, SECOND)
        assert answer == reference.generate(SECOND, max_new_tokens=MAX_TOKENS)
        note = browser.find_elements(By.CSS_SELECTOR, ".message.user .note")[-1]
        assert note.text == "without an image"
        browser.find_element(By.ID, "example").click()
        wait(browser, lambda d: d.find_element(By.ID, "tiling").get_attribute("data-ready") == "true")
        assert hint.text == "The image goes with your next question."


def test_demo_page_has_a_favicon(engine_dir, browser):
    with running_server(engine_dir, routes=demo_routes()) as server:
        browser.get(server.url + "/")
        icon = browser.execute_script("return document.querySelector('link[rel=icon]').href")
        for url in (icon, server.url + "/favicon.ico"):
            with urllib.request.urlopen(url, timeout=30) as response:
                assert response.status == 200 and response.headers["Content-Type"] == "image/svg+xml"
                assert response.read().startswith(b"<svg")
