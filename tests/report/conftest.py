"""Fixtures of the report tests: a headless browser."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest


def find_browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


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
