"""``mmeff app`` in a real browser: upload a scene, add a plugin, run, read both answers off the page.

Drives Debian's Chromium (``apt-get install chromium``) through Playwright with ``executable_path``, so no
browser download is needed. The answers must equal ``pipe.generate`` on the same image and question.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
from collections.abc import Iterator

import pytest

INSTALL = ("the app's browser test needs gradio and playwright (pip install 'mmeff[app]', or pip install gradio "
           "playwright) and Debian's Chromium (apt-get install -y chromium; Playwright drives it through "
           "executable_path, so `playwright install` is not needed)")
MISSING = [name for name in ("gradio", "playwright") if importlib.util.find_spec(name) is None]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    MISSING.append("chromium")
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"missing {', '.join(MISSING)}: {INSTALL}")

QUESTION = "describe the image."
TIMEOUT_MS = 60_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url() -> Iterator[str]:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from mmeff.app import build_app

    demo = build_app()
    port = _free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, ssr_mode=False,
                        quiet=True, share=False)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def page(app_url: str) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(app_url)
            page.locator("#vlm-run").wait_for()
            yield page
        finally:
            browser.close()


def test_upload_add_plugin_and_read_both_answers(page, tmp_path):
    from PIL import Image
    from playwright.sync_api import expect

    import mmeff
    from mmeff.testbed.assets import SHAPES_LLAVA
    from mmeff.testbed.render import render
    from mmeff.testbed.world import sample_scene

    image = render(sample_scene(1))
    png = tmp_path / "scene.png"
    Image.fromarray(image).save(png)
    pipe = mmeff.load(SHAPES_LLAVA)
    plain = pipe.generate([image], [QUESTION], max_new_tokens=24)[0]
    pipe.add_plugin("fastv", budget=64)
    with_fastv = pipe.generate([image], [QUESTION], max_new_tokens=24)[0]
    kept = int(pipe.last_stats["fastv"]["final_image_tokens"])

    page.locator("#vlm-image input[type=file]").set_input_files(str(png))
    page.locator("#vlm-image img").wait_for()  # uploaded and shown
    page.locator("#vlm-prompt textarea").fill(QUESTION)
    page.locator("#plugin-name input").click()
    page.get_by_role("option", name="fastv", exact=True).click()
    page.locator("#plugin-options textarea").fill("budget=64")
    page.locator("#add-plugin").click()
    expect(page.locator("#plugin-stack textarea")).to_have_value("fastv(budget=64)")
    page.locator("#vlm-run").click()

    expect(page.locator("#token-counts")).to_contain_text(f"{kept} of 144", timeout=TIMEOUT_MS)
    expect(page.locator("#answer-plain textarea")).to_have_value(plain)
    expect(page.locator("#answer-plugin textarea")).to_have_value(with_fastv)
    expect(page.locator("#timings")).to_contain_text("with plugins")
    overlay = page.locator("#token-overlay img")
    overlay.wait_for()
    size = overlay.evaluate("img => img.complete ? [img.naturalWidth, img.naturalHeight] : null")
    assert size == [288, 288]  # the 96 px view, enlarged 3x
    if os.environ.get("MMEFF_APP_SCREENSHOT"):  # to look at the page: MMEFF_APP_SCREENSHOT=page.png
        page.screenshot(path=os.environ["MMEFF_APP_SCREENSHOT"], full_page=True)


def test_text_to_image_tab_runs_reno_and_merging(page):
    from playwright.sync_api import expect

    page.locator("#tab-t2i-button, button[role=tab]:has-text('text-to-image')").first.click()
    page.locator("#t2i-prompt textarea").fill("two blue squares")
    page.locator("#reno-iterations input[type=number]").fill("2")
    page.locator("#reno-iterations input[type=number]").press("Enter")
    page.locator("#t2i-merge").get_by_label("tome_sd").check()
    page.locator("#t2i-run").click()

    summary = page.locator("#t2i-summary")
    expect(summary).to_contain_text("best of 2 iterations", timeout=TIMEOUT_MS)
    expect(summary).to_contain_text("tome_sd")
    for elem in ("#t2i-plain img", "#t2i-modified img"):
        assert page.locator(elem).evaluate("img => img.naturalWidth") == 256
