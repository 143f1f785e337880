"""The web page of catdog-serve in a real browser: headless Chromium (Debian's chromium and chromium-driver, driven
by selenium: extra browser) loads the page, uploads a picture through the file input, and shows the class and
probability /predict answers; errors are shown in the page; a screenshot is saved and is not blank."""

import shutil

import numpy as np
import pytest
from PIL import Image

from catdog.serving.client import Client, ServerProcess
from tests.conftest import extra_marks
from tests.e2e.test_serve_http import _env

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    *extra_marks("browser", "selenium"),
    *extra_marks("serve", "litserve"),
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="needs Chromium and its driver: sudo apt-get install chromium chromium-driver",
    ),
]


@pytest.fixture(scope="module")
def page_server(trained, tmp_path_factory):
    ckpt, data = trained
    root = tmp_path_factory.mktemp("page")
    args = [f"ckpt={ckpt}", "precision=32", "device=cpu", "serve.gradcam=true", f"hydra.run.dir={root / 'log'}"]
    with ServerProcess(args, cwd=root, env=_env(), log=str(root / "server.log")) as server:
        yield server, data


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,800",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait_for(driver, css: str, timeout: float = 60):
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(ec.presence_of_element_located(("css selector", css)))


def test_an_uploaded_photo_shows_the_class_and_probability_of_predict(page_server, browser, tmp_path):
    server, data = page_server
    image = data / "test" / "4.jpg"
    status, answer = Client(server.url).predict(image.read_bytes())
    assert status == 200
    browser.get(server.url + "/")
    _wait_for(browser, "#model")
    browser.find_element("css selector", "#files").send_keys(str(image))
    card = _wait_for(browser, '.result[data-status="done"]')
    shown = card.find_element("css selector", ".predicted")
    assert shown.get_attribute("data-class") == answer["class"]
    assert float(shown.get_attribute("data-probability")) == pytest.approx(answer["probability"], abs=1e-12)
    assert f"{100 * answer['probability']:.1f} %" in shown.text
    bars = {b.get_attribute("data-class"): float(b.get_attribute("data-probability"))
            for b in card.find_elements("css selector", ".bar")}  # fmt: skip
    assert bars == pytest.approx(answer["probabilities"], abs=1e-12)
    cam = card.find_element("css selector", "img.gradcam")
    assert cam.get_attribute("src").startswith("data:image/png;base64,")
    assert browser.execute_script("return arguments[0].naturalWidth", cam) > 0  # the overlay decoded
    description = browser.find_element("css selector", "#model").text
    assert "cat, dog" in description and "Grad-CAM" in description

    shot = tmp_path / "page.png"
    assert browser.save_screenshot(str(shot))
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.shape[0] > 100 and pixels.std() > 10  # not blank
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # a photo is drawn, not flat colours


def test_a_bad_file_shows_its_error_in_the_page(page_server, browser, tmp_path):
    server, _ = page_server
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not a picture\n" * 5)
    browser.get(server.url + "/")
    browser.find_element("css selector", "#files").send_keys(str(bad))
    card = _wait_for(browser, '.result[data-status="error"]')
    assert "415" in card.text and "not an image: a text file" in card.text
