"""The demo page in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium): upload the
bundled example image, see its tiling drawn, ask, watch the answer stream in, read the timing breakdown,
ask a follow-up; both answers equal the Pipeline's. A screenshot is saved (AERIE_SCREENSHOT=PATH keeps a
copy, e.g. docs/demo.png; AERIE_DEMO_ENGINE=DIR runs the page on another engine, e.g. a demo model)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from runtime.demo.routes import demo_routes
from runtime.pipeline import Pipeline
from runtime.preprocess import preprocess_image
from runtime.sampling import SamplingParams
from serving_helpers import running_server
from tiny_engines import built_engine

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")

EXAMPLE = Path(__file__).resolve().parents[1] / "runtime" / "demo" / "static" / "example.png"
FIRST, SECOND = "What colour is the shape?", "What shape is this?"
MAX_TOKENS = 64  # the page's default


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


def ask(driver, question: str) -> tuple[str, int]:
    """Type and send a question; wait for the answer to finish. Returns its text and how many times the
    answer's text changed while it streamed."""
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, "question")
    box.clear()
    box.send_keys(question)
    done_before = len(driver.find_elements(By.CSS_SELECTOR, ".message.assistant[data-done='true']"))
    driver.execute_script("""
        window.__updates = 0;
        new MutationObserver(() => window.__updates++).observe(
            document.getElementById('messages'), {subtree: true, characterData: true, childList: true});""")
    driver.find_element(By.ID, "send").click()
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".message.assistant[data-done='true']")) > done_before
         or d.find_elements(By.CSS_SELECTOR, ".message.error"))
    errors = driver.find_elements(By.CSS_SELECTOR, ".message.error")
    assert not errors, errors[0].get_attribute("textContent")
    answer = driver.find_elements(By.CSS_SELECTOR, ".message.assistant .text")[-1]
    return answer.get_attribute("textContent"), driver.execute_script("return window.__updates")


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
        if reference.spec.kind == "dynamic_tiles":
            cols, rows = inputs.grid
            assert layout["tiles"] == [list(box) for box in inputs.tiles[: cols * rows]]
        canvas = browser.find_element(By.ID, "canvas")
        assert canvas.is_displayed() and canvas.size["width"] > 100

        answer, updates = ask(browser, FIRST)
        want = reference.run(FIRST, [image], SamplingParams(max_new_tokens=MAX_TOKENS))
        assert answer == want.text
        if len(want.token_ids) > 4:  # a trained demo model answers in a word: nothing to stream then
            assert updates > 3, "the answer did not arrive piece by piece"
        timings = browser.find_elements(By.CSS_SELECTOR, ".timings")[-1].text
        for label in ("preprocess", "vision", "prefill", "decode", "first token", "total (browser)"):
            assert label in timings
        assert f"({want.prompt_tokens} tokens)" in timings
        n = len(want.token_ids)
        assert (f"({n} tokens, " if n > 1 else "(1 token, no decode step)") in timings

        follow_up, _ = ask(browser, SECOND)
        turns = [("user", f"<image>\n{FIRST}"), ("assistant", want.text), ("user", SECOND)]
        assert follow_up == reference.run(turns, [image], SamplingParams(max_new_tokens=MAX_TOKENS)).text

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
