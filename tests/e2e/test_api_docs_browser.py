"""`/docs` in a real headless browser (Debian's Chromium, driven by Playwright) against the
running app, whose keys are on: the page lists every operation of `/openapi.json`, a user
authorises with an API key, and "Try it out" on `/v1/classify` answers a label.

The last test's screenshot is the README's docs/swagger.png: CAPSERVE_DOCS_SCREENSHOT=PATH keeps
it there; otherwise it lands in the test's tmp_path. Without Chromium the tests skip, saying so.
"""

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.e2e.api_keys import CLASSIFY_KEY

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        CHROMIUM is None, reason="Debian's chromium is not installed (`make services` installs it)"
    ),
]
SCREENSHOT_TO = "CAPSERVE_DOCS_SCREENSHOT"
# Swagger UI fetches the document and renders every operation; a busy 2-core machine is slow.
PAGE_TIMEOUT_MS = 60_000
# The classify request goes through the engine like any other.
CLASSIFY_TIMEOUT_MS = 120_000
TEXT = "I lost my card, please block it"
# Swagger UI breaks long paths with zero-width spaces.
ZERO_WIDTH_SPACE = "\u200b"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM is not None
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


@pytest.fixture
def docs(browser: Browser, base_url: str) -> Iterator[Page]:
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    page.goto(f"{base_url}/docs")
    yield page
    page.close()


def test_the_page_lists_every_operation_of_the_document(docs: Page, base_url: str) -> None:
    document = httpx.get(f"{base_url}/openapi.json", timeout=30).json()
    operations = {
        f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item
    }
    blocks = docs.locator(".opblock")
    expect(blocks.first).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    expect(blocks).to_have_count(len(operations))
    methods = blocks.locator(".opblock-summary-method").all_inner_texts()
    paths = blocks.locator(".opblock-summary-path").all_inner_texts()
    listed = {
        f"{method} {path.replace(ZERO_WIDTH_SPACE, '')}"
        for method, path in zip(methods, paths, strict=True)
    }
    assert listed == operations


def test_try_it_out_on_classify_answers_a_label(docs: Page, tmp_path: Path) -> None:
    docs.locator("button.authorize").first.click()
    docs.locator("#auth-bearer-value").fill(CLASSIFY_KEY)
    docs.locator(".auth-btn-wrapper button.authorize").click()
    docs.locator(".auth-btn-wrapper button.btn-done").click()

    operation = docs.locator("#operations-default-classify")
    operation.locator(".opblock-summary").click()
    operation.locator("button.try-out__btn").click()
    operation.locator("textarea.body-param__text").fill(json.dumps({"texts": [TEXT]}))
    with docs.expect_response(
        lambda response: response.url.endswith("/v1/classify"), timeout=CLASSIFY_TIMEOUT_MS
    ) as answered:
        operation.locator("button.execute").click()
    response = answered.value
    assert response.request.headers["authorization"] == f"Bearer {CLASSIFY_KEY}"
    assert response.status == 200, response.text()
    [result] = response.json()["results"]
    label = result["label"]
    assert isinstance(label, str) and label

    # What the user sees: the live response's status and the label in its body.
    live = operation.locator(".live-responses-table .response")
    expect(live.locator(".response-col_status")).to_have_text("200", timeout=PAGE_TIMEOUT_MS)
    expect(live.locator(".response-col_description")).to_contain_text(f'"label": "{label}"')
    # Tall enough to show the request and its answer below the operation's title.
    docs.set_viewport_size({"width": 1280, "height": 1800})
    operation.evaluate("element => element.scrollIntoView()")
    screenshot = Path(os.environ.get(SCREENSHOT_TO, tmp_path / "swagger.png"))
    docs.screenshot(path=screenshot)
