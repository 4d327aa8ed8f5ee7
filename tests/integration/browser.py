"""Headless Chromium for the tests that look at pages as a reviewer does: Debian's `chromium`
(installed by .ci/run) driven through Playwright's CDP client. Playwright never downloads a
browser here: it launches the system one at PLASTER_TEST_CHROMIUM or on PATH."""

import contextlib
import os
import shutil
from dataclasses import dataclass, field

import pytest


def chromium_path() -> str:
    """The Chromium to drive, or skip the test saying how to get one."""
    found = os.environ.get("PLASTER_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("no Chromium on this machine: `apt-get install chromium` (.ci/run does) or set PLASTER_TEST_CHROMIUM")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as e:
        pytest.skip(f"playwright cannot be imported ({e}): run `make setup`")
    return found


@dataclass
class Seen:
    """What a page did while it loaded: console errors, failed responses, its text, and
    each image with whether it decoded (naturalWidth > 0)."""

    text: str = ""
    console_errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    images: dict[str, bool] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)  # link text -> href as rendered


@contextlib.contextmanager
def browser():
    """One headless Chromium for a test; yields `look(url, wait_for_text)` -> Seen."""
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])

        def look(url: str, wait_for_text: str, timeout_s: float = 60) -> Seen:
            seen = Seen()
            page = b.new_page()
            page.on("console", lambda m: seen.console_errors.append(m.text) if m.type == "error" else None)
            page.on("response", lambda r: seen.failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.on("requestfailed", lambda r: seen.failed.append(f"failed {r.url}"))
            page.goto(url)
            # The MLflow UI renders from JavaScript: wait for the text itself, not for "load".
            page.get_by_text(wait_for_text).first.wait_for(timeout=timeout_s * 1000)
            # Not "networkidle": the MLflow UI polls and never idles. A moment for the
            # requests the rendered text set off (images, tables) to answer or fail.
            page.wait_for_timeout(1500)
            seen.text = page.inner_text("body")
            seen.images = page.evaluate("() => Object.fromEntries([...document.images].map("
                                        "i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0]))")
            seen.links = page.evaluate("() => Object.fromEntries([...document.links].map("
                                       "a => [a.innerText.trim(), a.href]))")
            page.close()
            return seen

        try:
            yield look
        finally:
            b.close()
