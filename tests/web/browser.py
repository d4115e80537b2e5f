"""Driving Debian's Chromium with Playwright's async API (see shared notes: never `playwright install`)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from tests.conftest import skip_unless_present

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Page

CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", "/usr/bin/chromium") if Path(p).exists()), None)
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"


def browser_problem() -> str | None:
    """Why browser tests cannot run here (the skip reason), or None. In CI, where COUNTERSIGN_REQUIRE
    names "chromium", the same reason fails the run instead."""
    if CHROMIUM is None:
        return "Debian's Chromium is not installed (apt-get install chromium; never `playwright install`)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    return None


def require_browser() -> None:
    skip_unless_present("chromium", browser_problem())


PHONE = {"width": 390, "height": 844}
LAPTOP = {"width": 1280, "height": 860}


@asynccontextmanager
async def chromium(tmp_path: Path) -> AsyncIterator[Browser]:
    assert CHROMIUM is not None
    home = tmp_path / "chromium"
    # Chromium's singleton socket lives in TMPDIR and must fit a Unix socket path (~107 bytes), which
    # pytest's tmp_path does not; so TMPDIR is a short directory of its own.
    with tempfile.TemporaryDirectory(prefix="cs-chromium-", dir="/tmp") as short_tmp:
        env = {
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_CACHE_HOME": str(home / "cache"),
            "TMPDIR": short_tmp,
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        }
        for folder in ("config", "cache"):
            (home / folder).mkdir(parents=True, exist_ok=True)
        async with _launched(env) as browser:
            yield browser


@asynccontextmanager
async def _launched(env: dict[str, str]) -> AsyncIterator[Browser]:
    from playwright.async_api import async_playwright

    assert CHROMIUM is not None
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--disable-gpu", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"],
            env=env,
        )
        try:
            yield browser
        finally:
            await browser.close()


class PageWatch:
    """Collects what a page must never do: open dialogs, throw errors, or run injected script."""

    def __init__(self, page: Page) -> None:
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    async def _dialog(self, dialog: object) -> None:
        from playwright.async_api import Dialog

        assert isinstance(dialog, Dialog)
        self.dialogs.append(dialog.message)
        await dialog.dismiss()


async def new_page(browser: Browser, base_url: str, *, viewport: dict[str, int] | None = None) -> Page:
    context: BrowserContext = await browser.new_context(
        base_url=base_url, viewport=viewport or LAPTOP, accept_downloads=True
    )
    context.set_default_timeout(10_000)
    return await context.new_page()


async def sign_in(page: Page, name: str, password: str, *, shot: str | None = None) -> None:
    await page.goto("/inbox")
    assert "/signin" in page.url, "an anonymous visitor must be sent to sign in"
    await page.get_by_label("Name").fill(name)
    await page.get_by_label("Password").fill(password)
    if shot:
        await screenshot(page, shot)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url("**/inbox")


async def screenshot(page: Page, name: str, *, full_page: bool = False) -> None:
    """Pictures for docs/inbox.md, written only when COUNTERSIGN_SCREENSHOTS=1 (normal runs leave docs alone)."""
    if os.environ.get("COUNTERSIGN_SCREENSHOTS") != "1":
        return
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    # Let the clocks tick once so the picture shows live values rather than the server's first render.
    await page.wait_for_timeout(1100)
    await page.screenshot(path=str(DOCS_IMG / f"{name}.png"), full_page=full_page)
