"""Driving Debian's Chromium with Playwright's async API (see shared notes: never `playwright install`)."""

from __future__ import annotations

import os
import re
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
    await settled(page)
    await page.screenshot(path=str(DOCS_IMG / f"{name}.png"), full_page=full_page)


_SETTLED = """async () => {
  await document.fonts.ready;
  const deadline = performance.now() + 10000;
  while (document.querySelector(".htmx-request")) {
    if (performance.now() > deadline) throw new Error("an htmx request is still in flight after 10 s");
    await new Promise((resolve) => requestAnimationFrame(resolve));
  }
}"""


async def settled(page: Page) -> None:
    """Fonts loaded and no htmx request in flight, so a picture or a measurement shows the page at rest.

    The wait runs inside the page as a function: a string predicate (wait_for_function) would need eval,
    which the pages' Content-Security-Policy forbids.
    """
    await page.evaluate(_SETTLED)


async def title_is(page: Page, pattern: str) -> None:
    """Wait until the tab title matches `pattern` (a regular expression), without eval (see `settled`)."""
    from playwright.async_api import expect

    await expect(page).to_have_title(re.compile(pattern))


# What a page must fit into: the viewport, and for each element the nearest of these boxes around it.
CONTAINERS = ".card, .panel, .order, .table-wrap, .events tr, .empty, .notice, pre, .topbar, .decide, .fields"

_OVERFLOWS = """(containers) => {
  const width = window.innerWidth;
  const found = [];
  const describe = (el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") +
    [...el.classList].map((c) => "." + c).join("") + ` "${(el.textContent || "").trim().slice(0, 40)}"`;
  const root = document.documentElement;
  if (root.scrollWidth > width) found.push(`the page is ${root.scrollWidth} px wide in a ${width} px viewport`);
  for (const el of document.body.querySelectorAll("*")) {
    if (el.closest(".visually-hidden, .skip-link, datalist, script, [hidden]")) continue;
    const style = getComputedStyle(el);
    const box = el.getBoundingClientRect();
    if (style.display === "none" || style.visibility === "hidden" || (box.width === 0 && box.height === 0)) continue;
    const at = `${Math.round(box.left)}..${Math.round(box.right)}`;
    if (box.left < -1 || box.right > width + 1) found.push(`${describe(el)} spans ${at}, outside the viewport`);
    const container = el.parentElement && el.parentElement.closest(containers);
    if (container) {
      const outer = container.getBoundingClientRect();
      if (box.left < outer.left - 1 || box.right > outer.right + 1) {
        found.push(`${describe(el)} spans ${at}, outside ${describe(container)} ` +
          `(${Math.round(outer.left)}..${Math.round(outer.right)})`);
      }
    }
    if (["auto", "scroll"].includes(style.overflowX) && el.scrollWidth > el.clientWidth + 1) {
      found.push(`${describe(el)} scrolls sideways (${el.scrollWidth} px in ${el.clientWidth})`);
    }
  }
  return found;
}"""


async def overflows(page: Page) -> list[str]:
    """Every element that sticks out of the viewport or of its card or panel, or scrolls sideways."""
    await settled(page)
    found: list[str] = await page.evaluate(_OVERFLOWS, CONTAINERS)
    return found
