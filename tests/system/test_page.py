"""The web page at /ui/ in headless Chromium (Debian's /usr/bin/chromium; skipped when absent).

Uploads an X-ray through the page's form against a real ``bentoml serve`` and checks that
the verdict, the probability, the heatmap and the screening-aid notice are shown. A
screenshot is saved (``$CXR_SCREENSHOT`` or the test's temp dir) for a human to look at.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cxr import SCREENING_NOTICE
from tests.serving_fixtures import png_bytes

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} absent")]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield b
        b.close()


def xray_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    img = rng.normal(100, 25, (400, 360))
    img[100:220, 80:260] += 90
    path = tmp_path / "chest.png"
    path.write_bytes(png_bytes(img.clip(0, 255).astype(np.uint8)))
    return path


def test_page_shows_verdict_probability_heatmap_and_notice(browser, service, promoted_model, tmp_path):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    console_errors = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{service.url}/ui/")
    assert page.title() == "CXR pneumonia screening aid"
    assert page.locator("#notice").is_visible()
    assert page.locator("#notice").inner_text() == SCREENING_NOTICE
    # The page reads /metadata: the synthetic-model warning and the tag appear.
    page.wait_for_function("document.getElementById('footer').textContent.includes('cxr-pneumonia:')")
    assert page.locator("#model-warning").is_visible()

    page.set_input_files("#file", str(xray_file(tmp_path)))
    page.click("#submit")
    page.wait_for_selector("#result:not([hidden])", timeout=60_000)

    verdict = page.locator("#verdict").inner_text()
    probability = float(page.locator("#probability").inner_text())
    threshold = float(page.locator("#threshold").inner_text())
    assert verdict in ("NORMAL", "PNEUMONIA")
    assert verdict == ("PNEUMONIA" if probability >= threshold else "NORMAL")
    assert threshold == pytest.approx(promoted_model["threshold"], abs=1e-4)
    assert page.locator("#model-tag").inner_text() == promoted_model["tag"]
    assert SCREENING_NOTICE in page.locator("#result-notice").inner_text()
    natural = page.eval_on_selector("#heatmap", "img => img.complete ? img.naturalWidth : 0")
    assert natural == promoted_model["image_size"], "heatmap image did not load"
    shown = page.eval_on_selector("#heatmap", "img => img.getBoundingClientRect().width")
    assert shown >= 200, "the page does not scale the model-resolution heatmap up"

    shot = Path(os.environ.get("CXR_SCREENSHOT", tmp_path / "ui.png"))
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert not console_errors, console_errors
    page.close()


def test_page_shows_the_services_error_for_a_bad_file(browser, service, tmp_path):
    page = browser.new_page()
    page.goto(f"{service.url}/ui/")
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not an image")
    page.set_input_files("#file", str(bad))
    page.click("#submit")
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    assert "not a JPEG or PNG" in page.locator("#error").inner_text()
    assert page.locator("#result").is_hidden()
    page.close()


def test_page_shows_the_subtype_with_a_pneumonia_answer_and_none_with_a_normal_one(browser, service, tmp_path):
    from cxr import SUBTYPE_NOTICE
    from tests.serving_fixtures import blob_images

    # label 1: a bright square, 0: noise. The tiny fixture model answers most of them as drawn, not
    # all: films are sent until both answers have been seen.
    images, labels = blob_images(12, 160, seed=3)
    page = browser.new_page(viewport={"width": 1100, "height": 1300})
    page.goto(f"{service.url}/ui/")
    seen = {}
    for i, (image, label) in enumerate(zip(images, labels)):
        if len(seen) == 2:
            break
        path = tmp_path / f"blob{i}-{label}.png"
        path.write_bytes(png_bytes(image))
        page.evaluate("document.getElementById('result').hidden = true")
        page.set_input_files("#file", str(path))
        page.click("#submit")
        page.wait_for_selector("#result:not([hidden])", timeout=60_000)
        verdict = page.locator("#verdict").inner_text()
        seen[verdict] = True
        assert page.locator("#subtype").is_visible() == (verdict == "PNEUMONIA")
        assert page.locator("#subtype-unavailable").is_hidden()
        if verdict == "PNEUMONIA":
            assert page.locator("#subtype-label").inner_text() in ("Bacterial", "Viral")
            assert page.locator("#subtype-notice").inner_text() == SUBTYPE_NOTICE
            natural = page.eval_on_selector("#subtype-heatmap", "img => img.complete ? img.naturalWidth : 0")
            assert natural > 0, "the subtype heatmap did not load"
            page.screenshot(path=str(Path(os.environ.get("CXR_SCREENSHOT_SUBTYPE", tmp_path / "ui-subtype.png"))),
                            full_page=True)
    assert seen == {"PNEUMONIA": True, "NORMAL": True}
    page.close()
