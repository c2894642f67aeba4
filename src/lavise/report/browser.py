"""Headless Chromium for looking at a report: screenshots and the rendered DOM.

Used by the tests and by ``scripts/report_screenshot.py`` (the README's screenshot), so
both see the report the same way. Chromium runs isolated: a fresh profile folder, no
network services, no GPU, no sandbox (containers).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["find_chromium", "chromium_flags", "screenshot", "dump_dom"]

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--mute-audio")


def find_chromium() -> str | None:
    """The Chromium executable (``$LAVISE_CHROMIUM``, ``chromium``, ``chromium-browser``...), or None."""
    env = os.environ.get("LAVISE_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium_flags(profile: str | Path) -> list[str]:
    """The flags every headless run uses, with ``profile`` as a fresh user-data dir."""
    return [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("chromium not found (apt-get install chromium, or set LAVISE_CHROMIUM)")
    with tempfile.TemporaryDirectory(prefix="lavise-chromium-") as profile:
        return subprocess.run([exe, *chromium_flags(profile), *args], capture_output=True, text=True,
                              timeout=timeout, check=False)


def screenshot(url_or_path: str | Path, png: str | Path, *, width: int = 1280, height: int = 900,
               timeout: float = 60, wait_ms: int = 500) -> Path:
    """Writes a PNG screenshot of a page (a file path or a ``file://`` URL)."""
    url = _url(url_or_path)
    png = Path(png).resolve()
    res = _run([f"--window-size={width},{height}", f"--screenshot={png}", *_budget(wait_ms), url], timeout)
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot: {res.stderr[-500:]}")
    return png


def dump_dom(url_or_path: str | Path, *, timeout: float = 60, wait_ms: int = 500) -> str:
    """The page's DOM after its scripts ran, serialised as HTML."""
    res = _run([*_budget(wait_ms), "--dump-dom", _url(url_or_path)], timeout)
    if res.returncode != 0 and not res.stdout:
        raise RuntimeError(f"chromium failed: {res.stderr[-500:]}")
    return res.stdout


def _budget(wait_ms: int) -> list[str]:
    # A virtual time budget of 0 makes headless Chromium wait forever: leave the flag out.
    return [f"--virtual-time-budget={wait_ms}"] if wait_ms > 0 else []


def _url(url_or_path: str | Path) -> str:
    s = str(url_or_path)
    return s if "://" in s else Path(s).resolve().as_uri()
