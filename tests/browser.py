"""Headless Chromium for the browser tests, driven by Playwright (Debian's ``chromium`` binary).

Playwright drives the Chromium already on the machine (``executable_path``; no browser download).
Clicks go through its auto-waiting locators; its console, pageerror, request and dialog events
(dialogs are dismissed) make the logs the tests assert; screenshots are PNG bytes.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ARGS = ["--disable-gpu", "--disable-quic", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]  # fmt: skip


def chromium_binary() -> str | None:
    """Debian's ``chromium`` (or another Chromium/Chrome on PATH)."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageLog:
    """What happened while the page loaded."""

    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    screenshot: bytes = b""


class Browser:
    """One headless Chromium page driven like a person: navigate, click, type keys, reload."""

    def __init__(self, timeout: float = 60, width: int = 1400, height: int = 1000):
        binary = chromium_binary()
        if binary is None:
            raise FileNotFoundError("chromium not found (apt-get install -y chromium)")
        from playwright.sync_api import sync_playwright

        self.timeout_ms = timeout * 1000
        self.console_errors: list[str] = []  # console errors and uncaught exceptions
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self._context = None
        self._pw = sync_playwright().start()
        try:
            self._browser = self._pw.chromium.launch(
                executable_path=binary, args=ARGS, timeout=self.timeout_ms
            )
            self._new_page(width, height, mobile=False)
        except BaseException:
            self.close()  # no Chromium or driver left behind by a failed start
            raise

    def _new_page(self, width: int, height: int, mobile: bool) -> None:
        """A fresh context and page with this viewport, its events recorded."""
        if self._context is not None:
            self._context.close()
        self.mobile = mobile
        self._context = self._browser.new_context(
            viewport={"width": width, "height": height}, device_scale_factor=1,
            is_mobile=mobile, has_touch=mobile,
        )  # fmt: skip
        self.page = self._context.new_page()
        self.page.set_default_timeout(self.timeout_ms)
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda exc: self.console_errors.append(f"uncaught: {exc}"[:500]))
        self.page.on("request", lambda req: self.requests.append(req.url))
        self.page.on("dialog", self._on_dialog)

    def _on_console(self, msg: Any) -> None:
        if msg.type in ("error", "assert"):
            self.console_errors.append(f"console.{msg.type}: {msg.text}"[:500])

    def _on_dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()  # never leave a dialog blocking the page

    def _clear(self) -> None:
        self.console_errors.clear()
        self.requests.clear()
        self.dialogs.clear()

    def viewport(self, width: int, height: int, mobile: bool = False) -> None:
        """Resize the page; switching to or from a phone reopens the current URL in a new page."""
        if mobile == self.mobile:
            self.page.set_viewport_size({"width": width, "height": height})
            return
        url = self.page.url
        self._new_page(width, height, mobile)  # Playwright sets is_mobile per context
        if url != "about:blank":
            self.goto(url)

    def goto(self, url: str) -> None:
        """Open ``url`` and wait for its load event."""
        self._clear()
        self.page.goto(url, wait_until="load")

    def reload(self) -> None:
        """Reload and wait for the load event."""
        self._clear()
        self.page.reload(wait_until="load")

    def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        return self.page.evaluate(expression)

    def box(self, selector: str) -> dict | None:
        """The first matching element's box in viewport pixels (x, y, width, height), or None."""
        found = self.page.locator(selector)
        return found.first.bounding_box() if found.count() else None

    def click(self, selector: str, navigates: bool = True) -> None:
        """A real mouse click on the element, once it is visible, stable and enabled."""
        target = self.page.locator(selector)
        if not navigates:
            target.click()
            return
        self._clear()
        with self.page.expect_navigation(wait_until="load"):
            target.click()

    def key(self, key: str, navigates: bool = True) -> None:
        """Press and release one key (e.g. ArrowLeft) as a keyboard would."""
        if not navigates:
            self.page.keyboard.press(key)
            return
        self._clear()
        with self.page.expect_navigation(wait_until="load"):
            self.page.keyboard.press(key)

    def screenshot(self, full_page: bool = False) -> bytes:
        """A PNG of the viewport (or the whole page)."""
        return self.page.screenshot(full_page=full_page)

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions and dialogs seen since the last navigation."""
        return self.console_errors + ["dialog: " + d for d in self.dialogs]

    def close(self) -> None:
        """Close the browser and stop Playwright's driver."""
        try:
            if getattr(self, "_browser", None) is not None:
                self._browser.close()
        finally:
            self._pw.stop()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_page(
    html_file: Path, expressions: dict[str, str], timeout: float = 60, full_page: bool = False
) -> PageLog:
    """Load ``html_file`` in headless Chromium; return the log, evaluated values and a PNG."""
    url = Path(html_file).resolve().as_uri()
    with Browser(timeout) as b:
        b.goto(url)
        log = PageLog()
        for name, expr in expressions.items():
            log.values[name] = b.eval(expr)
        log.screenshot = b.screenshot(full_page=full_page)
        log.console_errors = list(b.console_errors)
        log.requests = [r for r in b.requests if r != url and not r.startswith("data:")]
        log.dialogs = list(b.dialogs)
        return log
