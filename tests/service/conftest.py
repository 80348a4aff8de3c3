"""Fixtures of the service tests: ``start_server`` and ``server`` (a real ``pyanalyzer serve``
on a free loopback port; see :mod:`service_helpers`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from service_helpers import Server


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Any]:
    """``start_server(*args, env=None, store=None)`` → a started :class:`Server`; every
    server started is killed at the end of the test."""
    servers: list[Server] = []

    def start(*args: str, env: dict[str, str] | None = None, store: Path | None = None) -> Server:
        server = Server(store or tmp_path / "store", *args, env=env)
        servers.append(server)
        return server.start()

    yield start
    for s in servers:
        with contextlib.suppress(Exception):
            s.kill()


@pytest.fixture
def server(start_server: Any) -> Server:
    """A started server without tokens (loopback), one worker."""
    return start_server()
