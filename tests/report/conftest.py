"""Fixtures of the report tests: a headless browser."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


def find_browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@contextlib.contextmanager
def offline_page(path: Path, width: int = 375, height: int = 700) -> Iterator[tuple[Any, list]]:
    """A real Chromium (Playwright) showing the local file ``path`` in a ``width`` px window,
    with every request that is not a local file refused and recorded: yields ``(page,
    external)``. Skips the test without Playwright or a Chromium on PATH."""
    playwright = pytest.importorskip("playwright.sync_api")
    exe = find_browser()
    if exe is None:
        pytest.skip("no chromium on PATH (apt-get install -y chromium)")
    external: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            ctx = browser.new_context(viewport={"width": width, "height": height})

            def route(r: Any) -> None:
                if r.request.url.startswith("file:"):
                    r.continue_()
                else:
                    external.append(r.request.url)
                    r.abort()

            ctx.route("**/*", route)
            page = ctx.new_page()
            page.goto(Path(path).resolve().as_uri())
            yield page, external
        finally:
            browser.close()


@pytest.fixture
def browser(tmp_path) -> Callable[..., subprocess.CompletedProcess]:
    """Run a headless Chromium on a local file: ``browser(page, "--dump-dom")``."""
    exe = find_browser()
    if exe is None:
        pytest.skip("no chromium on PATH (apt-get install -y chromium)")
    profile = tmp_path / "chromium-profile"

    def run(page: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        cmd = [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=2000",
            *args,
            page.resolve().as_uri(),
        ]
        env = {**os.environ, "HOME": str(tmp_path)}
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
        if proc.returncode != 0:
            raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return proc

    return run
