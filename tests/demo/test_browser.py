"""The demo in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`) driven by
selenium. A person's path: upload a reference and a target, try Generate without a box (a message in
the page), click two corners of the box, Generate, and get the target back with only the outlined
region changed. A screenshot is saved under the test's folder, and as ``demo.png`` in
``$ANYDOOR_SCREENSHOT_DIR`` when that is set (the README's picture: ``docs/images``)."""

from __future__ import annotations

import io
import os
import re
import shutil
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src.image_io import read_image

CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="Chromium or chromedriver missing: `apt-get install chromium chromium-driver` (.ci/run installs them)")
WAIT_S = 60


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1500,1100", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.downloads = tmp_path_factory.mktemp("downloads")
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(driver.downloads)})
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, condition, what: str, timeout: float = WAIT_S):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # the page replaces elements as results arrive: a stale one means "look again"
    return WebDriverWait(driver, timeout, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,)
                         ).until(condition, message=f"waiting for {what}")


def css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def toasts(driver) -> list[str]:
    return [t.text for t in css(driver, "[data-testid='toast-body']")]


def close_toasts(driver) -> None:
    for button in css(driver, "[data-testid='toast-close']"):
        button.click()


def upload(driver, elem_id: str, path: Path) -> None:
    before = [i.get_attribute("src") for i in css(driver, f"#{elem_id} img")]
    css(driver, f"#{elem_id} input[type=file]")[0].send_keys(str(path))
    # the page shows the picture our handler read (the uploaded file itself is already deleted)
    wait(driver, lambda d: [i.get_attribute("src") for i in css(d, f"#{elem_id} img")] not in ([], before),
         f"{elem_id} to show the upload")
    wait(driver, lambda d: "/image.png" in css(d, f"#{elem_id} img")[0].get_attribute("src"), f"{elem_id} preview")


def shown_picture(driver, elem_id: str):
    """The picture of a component once the browser has loaded it (a new one arrives after each click)."""
    loaded = "const i = arguments[0]; return i.complete && i.naturalWidth > 0"
    wait(driver, lambda d: css(d, f"#{elem_id} img") and d.execute_script(loaded, css(d, f"#{elem_id} img")[0]),
         f"the picture of {elem_id}")
    return css(driver, f"#{elem_id} img")[0]


def click_on(driver, element, x: int, y: int) -> None:
    """Click the pixel (x, y) of an image shown scaled to fit its element (``object-fit: contain``)."""
    from selenium.webdriver.common.action_chains import ActionChains

    nw, nh = driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", element)
    w, h = element.size["width"], element.size["height"]
    scale = min(w / nw, h / nh)  # the picture is centred in the element: offsets from its centre
    dx, dy = (x + 0.5 - nw / 2) * scale, (y + 0.5 - nh / 2) * scale
    ActionChains(driver).move_to_element_with_offset(element, round(dx), round(dy)).click().perform()


def full_page_png(driver) -> bytes:
    """The whole page, not only the window (Chrome DevTools' capture beyond the viewport)."""
    import base64

    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip})
    return base64.b64decode(shot["data"])


def fetch(url: str) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=30) as response:
        return read_image(response.read(), name=url)


def test_teleport_in_the_browser(browser, demo_server, scene_files, tmp_path):
    started = time.monotonic()
    browser.get(demo_server.url)
    wait(browser, lambda d: css(d, "#generate"), "the page")
    if not os.environ.get("ANYDOOR_DEMO_MODEL"):  # the defaults the test model folder recommends, shown
        assert "defaults: ddim, 1 step, guidance 1 (recommended by the model folder)" in css(browser, "#header")[0].text
        assert css(browser, "#steps input[type=number]")[0].get_attribute("value") == "1"
    upload(browser, "reference", scene_files["reference"])
    upload(browser, "target", scene_files["target"])
    target = read_image(scene_files["target"])

    # no box yet: a message in the page, no traceback
    css(browser, "#generate")[0].click()
    wait(browser, lambda d: any("target has no box" in t for t in toasts(d)), "the no-box message")
    page = css(browser, "body")[0].text
    assert "Traceback" not in page and 'File "' not in page
    close_toasts(browser)

    # two clicks draw the box (corners inclusive -> exclusive ends), and the page shows it drawn
    picture = shown_picture(browser, "target")
    shown = picture.get_attribute("src")
    click_on(browser, picture, 150, 90)
    wait(browser, lambda d: css(d, "#target img")[0].get_attribute("src") != shown, "the first corner marked")
    click_on(browser, shown_picture(browser, "target"), 299, 249)
    box_field = css(browser, "#box textarea, #box input")[0]
    wait(browser, lambda d: box_field.get_attribute("value"), "the box")
    x1, y1, x2, y2 = map(int, box_field.get_attribute("value").split())
    assert abs(x1 - 150) <= 2 and abs(y1 - 90) <= 2 and abs(x2 - 300) <= 2 and abs(y2 - 250) <= 2

    css(browser, "#generate")[0].click()
    wait(browser, lambda d: "Done in" in css(d, "#info")[0].text or toasts(d), "the result")
    assert not toasts(browser), toasts(browser)
    info = css(browser, "#info")[0].text
    region = tuple(map(int, re.search(r"changed region (\d+) (\d+) (\d+) (\d+)", info).groups()))

    # the file the download button gives: the target's size, unchanged outside the region
    css(browser, "#download")[0].click()
    downloaded = wait(browser, lambda d: sorted(browser.downloads.glob("anydoor_*.png")), "the download")[0]
    result = read_image(downloaded)
    assert result.shape == target.shape
    outside = np.ones(target.shape[:2], bool)
    outside[region[1]:region[3], region[0]:region[2]] = False
    assert np.array_equal(result[outside], target[outside]) and not np.array_equal(result, target)
    assert region[0] >= x1 - 15 and region[2] <= x2 + 15  # box mode: inside the grown box
    shown_after = fetch(css(browser, "#after img")[0].get_attribute("src"))
    assert np.array_equal(shown_after, result)  # the page shows the very pixels of the download

    # the page loaded nothing from outside this server (it must work on machines without internet)
    urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert [u for u in urls if not u.startswith(demo_server.url.rstrip("/"))] == []

    shot = full_page_png(browser)
    (tmp_path / "demo.png").write_bytes(shot)
    if os.environ.get("ANYDOOR_SCREENSHOT_DIR"):
        out = Path(os.environ["ANYDOOR_SCREENSHOT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        Image.open(io.BytesIO(shot)).convert("RGB").save(out / "demo.png", optimize=True)
    assert time.monotonic() - started < WAIT_S


def test_a_file_that_is_not_an_image_is_a_message_in_the_page(browser, demo_server, scene_files):
    browser.get(demo_server.url)
    wait(browser, lambda d: css(d, "#generate"), "the page")
    css(browser, "#target input[type=file]")[0].send_keys(str(scene_files["junk"]))
    wait(browser, lambda d: any("notes.png: not an image file" in t for t in toasts(d)), "the not-an-image message")
    assert "Traceback" not in css(browser, "body")[0].text
    assert not css(browser, "#target img")  # the bad upload is cleared, not shown broken


def paint(driver, elem_id: str, strokes: list[tuple[float, float, float, float]]) -> None:
    """Drag the brush across the editor's canvas: each stroke from (fx1, fy1) to (fx2, fy2), fractions of the
    picture shown."""
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = css(driver, f"#{elem_id} canvas")[0]
    w, h = canvas.size["width"], canvas.size["height"]
    for fx1, fy1, fx2, fy2 in strokes:
        chain = ActionChains(driver).move_to_element_with_offset(canvas, int((fx1 - 0.5) * w), int((fy1 - 0.5) * h))
        chain.click_and_hold()
        for k in range(1, 3):  # every pointer move is a software-WebGL render: few, long segments
            f = k / 2
            chain.move_to_element_with_offset(canvas, int((fx1 + f * (fx2 - fx1) - 0.5) * w),
                                              int((fy1 + f * (fy2 - fy1) - 0.5) * h))
        chain.release().perform()


def test_painted_reference_mask_and_painted_target_mask(browser, demo_server, scene_files):
    browser.get(demo_server.url)
    wait(browser, lambda d: css(d, "#generate"), "the page")
    upload(browser, "reference", scene_files["reference_rgb"])  # no transparency: its mask is painted
    upload(browser, "target", scene_files["target"])
    css(browser, "#place input[value='mask']")[0].click()
    wait(browser, lambda d: css(d, "#target-paint canvas") and css(d, "#shape")[0].is_displayed(), "the mask canvas")
    paint(browser, "reference-paint", [(0.4, 0.5, 0.6, 0.5)])
    paint(browser, "target-paint", [(0.45, 0.5, 0.55, 0.5)])
    css(browser, "#shape input")[0].click()
    css(browser, "#composite input[value='mask']")[0].click()
    css(browser, "#generate")[0].click()
    wait(browser, lambda d: "Done in" in css(d, "#info")[0].text or toasts(d), "the result")
    assert not toasts(browser), toasts(browser)
    info = css(browser, "#info")[0].text
    assert "reference mask: painted" in info and "location channel: mask shape" in info
    x1, y1, x2, y2 = map(int, re.search(r"changed region (\d+) (\d+) (\d+) (\d+)", info).groups())
    # a short stroke across the middle of the 480 x 320 target, pasted back by its (dilated) mask only
    assert 150 < (x1 + x2) / 2 < 330 and 100 < (y1 + y2) / 2 < 220 and (x2 - x1) * (y2 - y1) < 0.25 * 480 * 320
