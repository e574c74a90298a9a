"""The demo page: a real server on a free localhost port, driven through gradio's client and a
headless Chromium."""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from tests.helpers import write_tiny_bundle

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from clipgen.jobs.demo_page import build_demo, launch_options

    bundle = write_tiny_bundle(tmp_path_factory.mktemp("bundle"))
    port = _free_port()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("demo", overrides=[f"bundle={bundle}", "device=cpu", f"demo.port={port}",
                                         "demo.max_candidates=6", "n_candidates=3",
                                         "samples_per_prompt=2", "demo.max_upload_mb=1"])
    demo = build_demo(cfg)
    demo.launch(**launch_options(cfg), prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def _settings(**changes):
    values = {"prompt": "a red circle", "image": None, "method": "clipgen", "n_candidates": 3,
              "keep": 2, "guidance": 1.0, "top_k": 0, "temperature": 1.0, "seed": 0,
              "precision": "float32", "steps": 10}
    return {**values, **changes}


def test_a_prompt_returns_the_kept_images_and_their_records(server):
    from gradio_client import Client

    client = Client(server, verbose=False)
    job = client.submit(*_settings().values(), api_name="/generate")
    gallery, files, status = job.result(timeout=120)
    assert status.startswith("done: 2 image(s)")
    assert len(gallery) == 2 and "CLIP score" in gallery[0]["caption"]
    for item in gallery:
        with Image.open(item["image"]["path"] if isinstance(item["image"], dict)
                        else item["image"]) as im:
            assert im.size == (16, 16)
    paths = [Path(f["path"] if isinstance(f, dict) else f) for f in files]
    records = [json.loads(line) for line in next(p for p in paths
                                                 if p.name == "samples.jsonl").read_text()
               .splitlines()]
    assert [r["rank"] for r in records] == [0, 1] and records[0]["prompt"] == "a red circle"
    updates = job.outputs()  # previews streamed before the result
    assert any(u[2].startswith("clipgen: working") for u in updates[:-1])


def test_a_prompt_the_world_cannot_draw_is_named_in_the_status(server):
    from gradio_client import Client

    client = Client(server, verbose=False)
    job = client.submit(*_settings(prompt="two circles").values(), api_name="/generate")
    _, _, status = job.result(timeout=120)
    assert status.startswith("done: 2 image(s)") and "warning: prompt 'two circles'" in status


@pytest.mark.parametrize("method", ["clipgen", "optimize", "evolve"])
def test_each_generator_runs_in_bf16_from_the_page(server, method):
    from gradio_client import Client

    client = Client(server, verbose=False)
    job = client.submit(*_settings(method=method, precision="bfloat16", steps=2).values(),
                        api_name="/generate")
    gallery, _, status = job.result(timeout=120)
    assert status.startswith("done: 2 image(s)") and len(gallery) == 2


@pytest.mark.parametrize("changes, message", [
    ({"prompt": "  "}, "empty prompt"),
    ({"n_candidates": 60}, "greater than maximum value 6"),  # the slider's own bound
    ({"keep": 5}, "cannot exceed n_candidates"),
])
def test_bad_input_is_a_message_and_the_server_keeps_serving(server, changes, message):
    from gradio_client import Client

    client = Client(server, verbose=False)
    with pytest.raises(Exception, match=message):
        client.predict(*_settings(**changes).values(), api_name="/generate")
    assert client.predict(*_settings().values(), api_name="/generate")[2].startswith("done")


def test_a_run_can_be_cancelled_and_uploads_are_bounded(server, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.utils import Status

    client = Client(server, verbose=False)
    long = client.submit(*_settings(method="optimize", steps=300, keep=1).values(),
                         api_name="/generate")
    deadline = time.time() + 120
    while not any(o[2].startswith("optimize: working") for o in long.outputs()):
        assert not long.done() and time.time() < deadline, "no preview before the end"
        time.sleep(0.05)
    long.cancel()
    while not long.done() and time.time() < deadline:
        time.sleep(0.05)
    assert long.status().code == Status.CANCELLED
    assert not any(o[2].startswith("done") for o in long.outputs())
    assert client.predict(*_settings().values(), api_name="/generate")[2].startswith("done")
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 30), (200, 20, 20)).save(small)
    varied = client.predict(*_settings(image=handle_file(str(small)), prompt="").values(),
                            api_name="/generate")
    assert varied[2] == "done: 2 image(s) for 'variations of small.png'"
    big = tmp_path / "big.png"
    Image.frombytes("RGB", (800, 800), np.random.default_rng(0).bytes(800 * 800 * 3)).save(big)
    assert big.stat().st_size > 1_000_000
    with pytest.raises(Exception, match="(?i)file.*(large|size)|exceeds|413"):
        client.predict(*_settings(image=handle_file(str(big))).values(), api_name="/generate")


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium driven by selenium."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-sync",
                 "--disable-component-update", f"--user-data-dir={tmp_path / 'profile'}",
                 "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _prompt_box(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server)
    return WebDriverWait(browser, 120).until(
        ready.element_to_be_clickable((By.CSS_SELECTOR, "#prompt textarea")))


def _erase(box) -> None:
    """Empty a text box as a person does (select all, delete), which the page hears."""
    from selenium.webdriver.common.keys import Keys

    box.send_keys(Keys.CONTROL + "a", Keys.DELETE)


def _wait_for_text(browser, text: str, timeout: float = 120) -> None:
    """Wait until the page shows `text` (as rendered: no markup)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, timeout).until(
        lambda b: text in b.find_element(By.TAG_NAME, "body").text,
        message=f"{text!r} never shown on the page")


def test_the_page_in_a_real_browser(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    box = _prompt_box(browser, server)
    box.clear()
    box.send_keys("a blue star")
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    _wait_for_text(browser, "done: ")
    images = browser.find_elements(By.CSS_SELECTOR, "#gallery img")
    assert len(images) >= 2
    assert "shipped Shapes bundle" not in browser.page_source  # says which model it is
    assert "Model:" in browser.page_source
    assert "the prompt 'a blue star'" in browser.find_element(By.CSS_SELECTOR,
                                                              "#input_choice").text
    browser.save_screenshot(str(tmp_path / "page.png"))
    with Image.open(tmp_path / "page.png") as shot:
        assert shot.size[0] > 600


def test_the_page_says_which_input_it_uses_and_refuses_both(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    picture = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (200, 20, 20)).save(picture)
    _prompt_box(browser, server)
    browser.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(picture))
    _wait_for_text(browser, "both a prompt and an image are given: Generate refuses this")
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    _wait_for_text(browser, "clear the prompt to make variations of the image")
    assert "done: " not in browser.find_element(By.CSS_SELECTOR, "#status").text
    _erase(browser.find_element(By.CSS_SELECTOR, "#prompt textarea"))
    _wait_for_text(browser, "the image photo.png (variations of it)")
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    _wait_for_text(browser, "done: 2 image(s) for 'variations of photo.png'")


def test_a_file_that_is_not_an_image_gets_the_clear_message_in_a_browser(server, browser,
                                                                           tmp_path):
    from selenium.webdriver.common.by import By

    notes = tmp_path / "notes.png"
    notes.write_text("these are notes, not pixels")
    _erase(_prompt_box(browser, server))
    browser.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(notes))
    _wait_for_text(browser, "the image notes.png")
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    _wait_for_text(browser, "is not an image PIL can read")
    assert "UnidentifiedImageError" not in browser.page_source
    assert "Could not preprocess" not in browser.page_source


def test_part_rows_compose_into_a_prompt():
    from clipgen.generation.prompt_parts import PromptPart, parse_prompt
    from clipgen.jobs.demo_page import parts_prompt

    prompt = parts_prompt("a blue diamond", 1, " a red star ", 1.0, "", 3, "a red diamond", -1)
    assert prompt == "a blue diamond AND a red star NOT a red diamond"
    assert parse_prompt(parts_prompt("a star", 2, None, 1, "a circle", -0.5)) == [
        PromptPart("a star", 2.0), PromptPart("a circle", -0.5)]
    for rows, message in [(("", 1, " ", 2), "no parts"), (("a star", 1, "a circle", -1),
                                                            "sum to zero"),
                          (("a star", 0), "weight 0")]:
        with pytest.raises(ValueError, match=message):
            parts_prompt(*rows)


def test_the_parts_field_writes_a_composed_prompt_that_generates(server, browser):
    from selenium.webdriver.common.by import By

    box = _prompt_box(browser, server)
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    browser.find_element(By.CSS_SELECTOR, "#parts button").click()  # open the accordion
    WebDriverWait(browser, 30).until(  # its rows render after the click
        ready.element_to_be_clickable((By.CSS_SELECTOR, "#part0 textarea")))
    for i, (text, weight) in enumerate([("a blue diamond", "1"), ("a red star", "1"),
                                        ("a red diamond", "-1")]):
        browser.find_element(By.CSS_SELECTOR, f"#part{i} textarea").send_keys(text)
        number = browser.find_element(By.CSS_SELECTOR, f"#weight{i} input")
        _erase(number)
        number.send_keys(weight)
    browser.find_element(By.CSS_SELECTOR, "#compose").click()
    composed = "a blue diamond AND a red star NOT a red diamond"
    _wait_for_text(browser, f"the prompt {composed!r}")
    assert box.get_attribute("value") == composed
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    _wait_for_text(browser, f"done: 2 image(s) for '{composed}'")
    # a bad part is refused on the page with its message, and the prompt is left as it was
    number = browser.find_element(By.CSS_SELECTOR, "#weight1 input")
    _erase(number)
    number.send_keys("0")
    browser.find_element(By.CSS_SELECTOR, "#compose").click()
    _wait_for_text(browser, "has weight 0: leave it out")
    assert box.get_attribute("value") == composed
