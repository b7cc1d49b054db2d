"""A real browser against the real app: Debian's Chromium driven by Playwright.

Never downloads a browser: it uses /usr/bin/chromium and skips when that (or the
playwright package) is missing. Screenshots go to docs/screenshots/ when
``SAVE_SCREENSHOTS=1`` (what the README shows), else to the test's tmp folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest

import app
from assistant.feedback import FeedbackStore
from conftest import REPO, free_port

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
CREDS = ("merch", "browser-test-password")
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed at /usr/bin/chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def url(cj_assistant, tmp_path_factory):
    store = FeedbackStore(tmp_path_factory.mktemp("browser-feedback") / "feedback.sqlite")
    demo = app.build_app(cj_assistant, use_llm=False, personas=app.discover_personas(cj_assistant, 4),
                         feedback=store, merch_credentials=CREDS)
    yield app.launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    demo.close()
    store.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    if os.environ.get("SAVE_SCREENSHOTS") == "1":
        out = REPO / "docs" / "screenshots"
        out.mkdir(parents=True, exist_ok=True)
        return out
    return tmp_path


@pytest.fixture
def page(browser, url):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    remote: list[str] = []
    page.on("request", lambda r: remote.append(r.url)
            if urlparse(r.url).scheme in ("http", "https", "ws", "wss")
            and urlparse(r.url).hostname not in LOCAL_HOSTS else None)
    page.goto(url)
    yield page
    context.close()
    assert remote == [], f"the page reached outside the machine: {remote[:5]}"


def money(text: str) -> float:
    return float(re.search(r"\$([\d,]+\.\d\d)", text).group(1).replace(",", ""))


def test_shopper_chats_and_fills_the_cart(page, shots: Path):
    box = page.get_by_placeholder(re.compile("Taco night"))
    box.fill("pasta night under $15, no dairy")
    box.press("Enter")
    price = page.locator("#bundle-card-1 .ba-price")
    price.wait_for(state="visible")
    bundle_price = money(price.inner_text())
    assert 0 < bundle_price <= 15
    first_card = page.locator("#bundle-card-1")
    assert first_card.locator(".ba-items li").count() >= 2
    assert "Why this bundle" in first_card.inner_text()
    assert "milk" not in first_card.inner_text().lower()
    # the reply in the chat came first and names the same price
    assert f"${bundle_price:.2f}" in page.locator(".bubble-wrap, [role=log]").first.inner_text()

    page.get_by_role("button", name="Add bundle to cart").first.click()
    total = page.locator("#cart .ba-cart-total")
    total.wait_for(state="visible")
    assert money(total.inner_text()) == pytest.approx(bundle_price)
    page.get_by_role("button", name="Add bundle to cart").first.click()
    page.wait_for_function(
        "(want) => { const t = document.querySelector('#cart .ba-cart-total');"
        " return t && t.textContent.includes(want); }",
        arg=f"${2 * bundle_price:.2f}")
    page.locator("#bundle-card-1 details summary").click()  # open "why this bundle"
    page.wait_for_function("() => !document.querySelector('.toast-body')", timeout=15_000)
    page.screenshot(path=str(shots / "shopper.png"), full_page=True)
    assert (shots / "shopper.png").stat().st_size > 10_000


def test_merchandiser_signs_in_and_generates_bundles(page, shots: Path):
    page.get_by_role("tab", name="Merchandiser").click()
    generate = page.get_by_role("button", name="Generate bundles")
    assert not generate.is_visible()  # nothing before signing in
    page.get_by_label("User").fill(CREDS[0])
    page.get_by_label("Password").fill("not-it")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("Wrong user name or password.").wait_for()
    assert not generate.is_visible()
    page.get_by_label("Password").fill(CREDS[1])
    page.get_by_role("button", name="Sign in").click()
    generate.wait_for(state="visible")
    page.get_by_label("Theme").fill("back-to-school lunch")
    generate.click()
    page.get_by_text(re.compile(r"\d+ bundles · \d+ rejected")).wait_for()
    assert page.get_by_text("preference_contribution").count() >= 1
    page.screenshot(path=str(shots / "merchandiser.png"), full_page=True)
    assert (shots / "merchandiser.png").stat().st_size > 10_000
