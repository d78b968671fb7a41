"""Drive headless Chromium over the DevTools protocol, standard library only.

Chromium started with ``--remote-debugging-pipe`` reads protocol commands from file descriptor 3 and
writes replies and events to descriptor 4, each message JSON terminated by a NUL byte (the transport
Playwright uses). No websocket client, no port, no npm: ``os.posix_spawn`` maps two pipes onto those
descriptors. Debian's ``chromium`` package provides the browser (``apt-get install -y chromium``).
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Self

# Without the background-networking flags Chromium keeps trying to reach Google services and logs the refusals.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
)


def find_chromium() -> str | None:
    """The Chromium binary (``$CHROMIUM``, else ``chromium`` / ``chromium-browser`` on PATH), or ``None``."""
    configured = os.environ.get("CHROMIUM")
    if configured and Path(configured).is_file():
        return configured
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


class ChromiumError(RuntimeError):
    """The browser did not answer as expected (the message holds the protocol error)."""


class Chromium:
    """One headless browser with one page, driven over the DevTools pipe.

    Use as a context manager; :meth:`open` loads a URL, :meth:`evaluate` runs JavaScript in the page and
    returns its (JSON) value, :meth:`screenshot` writes a PNG.
    """

    def __init__(self, binary: str, timeout: float = 30.0, width: int = 1400, height: int = 900) -> None:
        self.binary = binary
        self.timeout = timeout
        self.width = width
        self.height = height
        self._profile = tempfile.mkdtemp(prefix="medbench-chromium-")
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        self.session: str | None = None
        self.console: list[str] = []

    def __enter__(self) -> Self:
        to_browser_read, self._write_fd = os.pipe()
        self._read_fd, from_browser_write = os.pipe()
        devnull = os.open(os.devnull, os.O_RDWR)
        actions = [
            (os.POSIX_SPAWN_DUP2, devnull, 0),
            (os.POSIX_SPAWN_DUP2, devnull, 1),
            (os.POSIX_SPAWN_DUP2, devnull, 2),
            (os.POSIX_SPAWN_DUP2, to_browser_read, 3),
            (os.POSIX_SPAWN_DUP2, from_browser_write, 4),
        ]
        argv = [
            self.binary,
            *FLAGS,
            "--remote-debugging-pipe",
            f"--user-data-dir={self._profile}",
            f"--window-size={self.width},{self.height}",
            "about:blank",
        ]
        self.pid = os.posix_spawn(self.binary, argv, dict(os.environ), file_actions=actions)
        for fd in (to_browser_read, from_browser_write, devnull):
            os.close(fd)
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime"):
            self.call(f"{domain}.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
        )
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._send({"id": self._new_id(), "method": "Browser.close"})
        except OSError:
            pass  # the browser is already gone; the kill below is a no-op then
        deadline = time.monotonic() + 5
        exited = False
        while not exited and time.monotonic() < deadline:
            exited = os.waitpid(self.pid, os.WNOHANG) != (0, 0)
            if not exited:
                time.sleep(0.05)
        if not exited:
            os.kill(self.pid, signal.SIGKILL)  # our own child, by pid
            os.waitpid(self.pid, 0)
        os.close(self._write_fd)
        os.close(self._read_fd)
        shutil.rmtree(self._profile, ignore_errors=True)

    # ------------------------------------------------------------------------------------ transport

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _send(self, message: dict[str, Any]) -> None:
        os.write(self._write_fd, json.dumps(message).encode() + b"\0")

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChromiumError("timed out waiting for the browser")
            ready, _, _ = select.select([self._read_fd], [], [], remaining)
            if ready:
                chunk = os.read(self._read_fd, 1 << 20)
                if not chunk:
                    raise ChromiumError("the browser closed the DevTools pipe (did it start? try running it by hand)")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one protocol command and return its result (events that arrive meanwhile are kept)."""
        message: dict[str, Any] = {"id": self._new_id(), "method": method, "params": params or {}}
        if self.session and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        self._send(message)
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == message["id"]:
                if "error" in reply:
                    raise ChromiumError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._record(reply)

    def _record(self, event: dict[str, Any]) -> None:
        if event.get("method") == "Runtime.consoleAPICalled":
            args = event["params"].get("args", [])
            self.console.append(" ".join(str(arg.get("value", arg.get("description", ""))) for arg in args))
        elif event.get("method") == "Runtime.exceptionThrown":
            self.console.append("exception: " + json.dumps(event["params"].get("exceptionDetails", {}))[:500])
        self._events.append(event)

    def wait_for_event(self, method: str) -> dict[str, Any]:
        """Block until the page sends ``method`` (or return it if it already arrived)."""
        deadline = time.monotonic() + self.timeout
        while True:
            for index, event in enumerate(self._events):
                if event.get("method") == method:
                    return self._events.pop(index)
            self._record(self._receive(deadline))

    # -------------------------------------------------------------------------------------- page API

    def open(self, url: str) -> None:
        """Navigate and wait for the load event."""
        self._events.clear()
        result = self.call("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise ChromiumError(f"cannot open {url}: {result['errorText']}")
        self.wait_for_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """Run JavaScript in the page; returns its value (promises awaited)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise ChromiumError(
                f"JavaScript failed: {result['exceptionDetails'].get('exception', {}).get('description')}"
            )
        return result["result"].get("value")

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        """Write a PNG of the viewport (or the whole page)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.call("Page.getLayoutMetrics")["cssContentSize"]
            params.update(
                captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
            )
        data = self.call("Page.captureScreenshot", params)["data"]
        path.write_bytes(base64.b64decode(data))
        return path
