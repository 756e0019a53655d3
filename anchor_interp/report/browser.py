"""Headless Chromium for checking reports: find a browser, dump a rendered page's DOM, take a screenshot.

Used by the browser tests and the docs screenshot. The page may not reach any network: no name
resolves and every request goes to a dead proxy (``OFFLINE_FLAGS``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

CHROMIUM_INSTALL_HINT = (
    "install Chromium for the browser checks: `sudo apt-get install chromium` (Debian/Ubuntu), "
    "or point ANCHOR_INTERP_CHROMIUM at a Chromium/Chrome binary"
)
# The page may not reach any network: no name resolves and every request goes to a dead proxy.
OFFLINE_FLAGS = ("--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9",
                 "--proxy-bypass-list=<-loopback>")


def find_browser() -> str | None:
    """Path of a headless-capable Chromium: $ANCHOR_INTERP_CHROMIUM, else chromium / chromium-browser /
    google-chrome on PATH; None if there is none."""

    env = os.environ.get("ANCHOR_INTERP_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _browser_cmd(browser: str | None, budget_ms: int) -> list[str]:
    browser = browser or find_browser()
    if browser is None:
        raise RuntimeError("no Chromium found; " + CHROMIUM_INSTALL_HINT)
    cmd = [browser, "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           "--disable-extensions", f"--virtual-time-budget={budget_ms}", *OFFLINE_FLAGS]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    return cmd


def dump_dom(html_path: str | os.PathLike, *, browser: str | None = None, budget_ms: int = 8000,
             timeout_s: float = 120, width: int | None = None, height: int = 900) -> str:
    """The DOM of ``html_path`` after headless Chromium ran its scripts for ``budget_ms`` of virtual
    time, offline. ``width`` (CSS pixels): the window width the page is laid out at (Chromium's default
    when None). Raises RuntimeError if there is no browser or it fails."""

    url = Path(html_path).resolve().as_uri()
    size = [f"--window-size={width},{height}"] if width else []
    proc = subprocess.run([*_browser_cmd(browser, budget_ms), *size, "--dump-dom", url], capture_output=True,
                          text=True, timeout=timeout_s)
    if proc.returncode != 0 or not proc.stdout:
        raise RuntimeError(f"chromium --dump-dom failed (exit {proc.returncode}): {proc.stderr[-500:]}")
    return proc.stdout


def screenshot(html_path: str | os.PathLike, png_path: str | os.PathLike, *, width: int = 1280, height: int = 2400,
               browser: str | None = None, budget_ms: int = 8000, timeout_s: float = 120) -> Path:
    """Save a PNG screenshot (``width`` x ``height`` CSS pixels) of the rendered report, offline.

    Used for docs/img/report.png. Raises RuntimeError if there is no browser or it fails.
    """

    png_path = Path(png_path).resolve()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = png_path.with_name(f".{png_path.stem}.tmp.png")
    url = Path(html_path).resolve().as_uri()
    proc = subprocess.run([*_browser_cmd(browser, budget_ms), f"--window-size={width},{height}",
                           f"--screenshot={tmp}", url], capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0 or not tmp.is_file():
        raise RuntimeError(f"chromium --screenshot failed (exit {proc.returncode}): {proc.stderr[-500:]}")
    os.replace(tmp, png_path)
    return png_path
