"""A headless Chromium (Debian's `chromium`) with one page, driven over the DevTools protocol (a plain
WebSocket: the `websockets` package the stack installs). The browser tests of the web page
(`test_webui_browser.py`, `test_service_browser.py`) add their own steps on top."""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
WIDTH, HEIGHT = 1280, 900


class Chromium:
    """One headless Chromium and its page. Script errors and console errors the page raises are
    collected in `errors` (a test asserts there are none)."""

    def __init__(self, profile: Path) -> None:
        from websockets.sync.client import connect

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
             "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-extensions", "--mute-audio",
             "--hide-scrollbars", f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", f"--window-size={WIDTH},{HEIGHT}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port_file = profile / "DevToolsActivePort"  # Chromium writes the port it bound
            self.until(lambda: port_file.is_file() and port_file.read_text().strip(), "chromium to start")
            port = int(port_file.read_text().split()[0])
            pages = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30).read())
            ws_url = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")
            self.ws = connect(ws_url, max_size=2**27, open_timeout=30)
        except BaseException:
            self.close()
            raise
        self.n = 0
        self.errors: list[str] = []
        self.call("Runtime.enable")
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)

    def until(self, predicate, what: str, bound_s: float = 120.0) -> None:
        """Poll until `predicate()`; the bound only catches a hang."""
        deadline = time.monotonic() + bound_s
        while not predicate():
            if getattr(self, "proc", None) is not None and self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited ({self.proc.returncode}) while waiting for {what}")
            assert time.monotonic() < deadline, f"still waiting for {what}"
            time.sleep(0.02)

    def call(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=120))
            if msg.get("method") == "Runtime.exceptionThrown":
                self.errors.append(json.dumps(msg["params"]["exceptionDetails"])[:500])
            elif msg.get("method") == "Runtime.consoleAPICalled" and msg["params"]["type"] == "error":
                self.errors.append(json.dumps(msg["params"]["args"])[:500])
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def png(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: helpers that outlive the browser
        except ProcessLookupError:
            pass
        self.proc.wait(10)
