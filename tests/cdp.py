"""Open a local HTML file in headless Chromium over the DevTools protocol (pure Python client).

Records console errors, uncaught exceptions, every network request and every JavaScript dialog
(auto-dismissed) while the page loads, then evaluates expressions and takes a screenshot.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
    "--window-size=1400,1000",
]


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


class _Session:
    def __init__(self, ws_url: str):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params: Any) -> dict:
        self.next_id += 1
        my_id = self.next_id
        self.ws.settimeout(60)  # drain() leaves a short timeout behind
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._event(msg)

    def _event(self, msg: dict) -> None:
        if "method" not in msg:
            return
        self.events.append(msg)
        if msg["method"] == "Page.javascriptDialogOpening":  # never leave a dialog blocking
            self.ws.send(json.dumps({"id": 10**6 + len(self.events),
                                     "method": "Page.handleJavaScriptDialog",
                                     "params": {"accept": False}}))  # fmt: skip

    def wait_for(self, method: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if any(e["method"] == method for e in self.events):
            return
        while time.monotonic() < deadline:
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            msg = json.loads(self.ws.recv())
            self._event(msg)
            if msg.get("method") == method:
                return
        raise TimeoutError(method)

    def drain(self, seconds: float) -> None:
        import websocket

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.ws.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                self._event(json.loads(self.ws.recv()))
            except websocket.WebSocketTimeoutException:
                return


def open_page(
    html_file: Path, expressions: dict[str, str], timeout: float = 60, full_page: bool = False
) -> PageLog:
    """Load ``html_file`` in headless Chromium; return the log, evaluated values and a PNG."""
    url = Path(html_file).resolve().as_uri()
    with Browser(timeout) as browser:
        s = browser.s
        s.call("Page.navigate", url=url)
        s.wait_for("Page.loadEventFired", timeout)
        s.drain(1.0)  # late console messages, timers, image errors
        log = PageLog()
        for name, expr in expressions.items():
            res = s.call("Runtime.evaluate", expression=expr, returnByValue=True)
            log.values[name] = res.get("result", {}).get("value")
        shot = s.call("Page.captureScreenshot", format="png", captureBeyondViewport=full_page)
        log.screenshot = base64.b64decode(shot["data"])
        s.drain(0.3)
        for e in s.events:
            m, p = e["method"], e.get("params", {})
            if m == "Runtime.exceptionThrown":
                log.console_errors.append(json.dumps(p.get("exceptionDetails", {}))[:500])
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                log.console_errors.append(json.dumps(p.get("args", []))[:500])
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                log.console_errors.append(p["entry"].get("text", "")[:500])
            elif m == "Network.requestWillBeSent":
                req = p.get("request", {}).get("url", "")
                if req != url and not req.startswith("data:"):
                    log.requests.append(req)
            elif m == "Page.javascriptDialogOpening":
                log.dialogs.append(p.get("message", ""))
        return log


class Browser:
    """One headless Chromium page driven like a person: navigate, click, type keys, reload."""

    def __init__(self, timeout: float = 60):
        binary = chromium_binary()
        if binary is None:
            raise FileNotFoundError("chromium not found (apt-get install -y chromium)")
        self.timeout = timeout
        self.profile = Path(tempfile.mkdtemp(prefix="varbench-chromium-"))
        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            port_file = self.profile / "DevToolsActivePort"
            deadline = time.monotonic() + timeout
            while not (port_file.is_file() and port_file.read_text().strip()):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("chromium did not open its DevTools port")
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                targets = json.loads(r.read())
            page = next(t for t in targets if t.get("type") == "page")
            self.s = _Session(page["webSocketDebuggerUrl"])
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.s.call(f"{domain}.enable")
        except BaseException:
            self.close()  # no Chromium or profile left behind by a failed start
            raise

    def viewport(self, width: int, height: int, mobile: bool = False) -> None:
        self.s.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                    deviceScaleFactor=1, mobile=mobile)  # fmt: skip

    def _navigation(self, action) -> None:
        self.s.events.clear()
        action()
        self.s.wait_for("Page.loadEventFired", self.timeout)
        self.s.drain(0.2)

    def goto(self, url: str) -> None:
        self._navigation(lambda: self.s.call("Page.navigate", url=url))

    def reload(self) -> None:
        self._navigation(lambda: self.s.call("Page.reload", ignoreCache=True))

    def eval(self, expression: str) -> Any:
        res = self.s.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return res.get("result", {}).get("value")

    def box(self, selector: str) -> dict | None:
        """The element's bounding box in viewport pixels (x, y, width, height), or None."""
        return self.eval(
            f"(function(){{var e=document.querySelector({json.dumps(selector)});if(!e)return null;"
            "var r=e.getBoundingClientRect();return {x:r.x,y:r.y,width:r.width,height:r.height};})()"
        )

    def click(self, selector: str, navigates: bool = True) -> None:
        """A real mouse click at the element's centre."""
        b = self.box(selector)
        if b is None:
            raise AssertionError(f"no element {selector}")
        x, y = b["x"] + b["width"] / 2, b["y"] + b["height"] / 2

        def act():
            for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
                self.s.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                            clickCount=1)  # fmt: skip

        self._navigation(act) if navigates else act()

    def key(self, key: str, navigates: bool = True) -> None:
        """Press and release one key (e.g. ArrowLeft) as a keyboard would."""
        codes = {"ArrowLeft": 37, "ArrowUp": 38, "ArrowRight": 39, "ArrowDown": 40}

        def act():
            for kind in ("rawKeyDown", "keyUp"):
                self.s.call("Input.dispatchKeyEvent", type=kind, key=key, code=key,
                            windowsVirtualKeyCode=codes.get(key, 0))  # fmt: skip

        self._navigation(act) if navigates else act()

    def screenshot(self) -> bytes:
        shot = self.s.call("Page.captureScreenshot", format="png")
        return base64.b64decode(shot["data"])

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions and dialogs seen since the last navigation."""
        out = []
        for e in self.s.events:
            m, p = e["method"], e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(json.dumps(p.get("exceptionDetails", {}))[:300])
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(json.dumps(p.get("args", []))[:300])
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(p["entry"].get("text", "")[:300])
            elif m == "Page.javascriptDialogOpening":
                out.append("dialog: " + p.get("message", ""))
        return out

    def close(self) -> None:
        try:
            if hasattr(self, "s"):
                self.s.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
