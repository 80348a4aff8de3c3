"""The service's settings and the folders it keeps beside the store, and its bearer tokens."""

from __future__ import annotations

import hmac
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from pyanalyzer.errors import UserInputError

__all__ = ["ServiceConfig", "is_loopback", "read_tokens"]

LOCAL_OWNER = "local"
"""The owner of everything on a server started without tokens (loopback only)."""


@dataclass(frozen=True)
class ServiceConfig:
    """What ``pyanalyzer serve`` runs with.

    Attributes:
        store: the result store folder (shared with the CLI and the library).
        datasets: a folder whose Broden-format subfolders jobs may dissect against.
        workers: worker processes running jobs (at least 1).
        max_upload_mb: the largest model or image upload, in MiB (413 above).
        max_queued: jobs one token may have queued at once (429 above).
        tokens: token name → token; empty: no authentication (loopback only).
        ray_address: a Ray cluster the workers run the shards of their jobs on (None: in
            the worker processes).
    """

    store: Path
    datasets: Path | None = None
    workers: int = 1
    max_upload_mb: int = 512
    max_queued: int = 64
    tokens: dict[str, str] = field(default_factory=dict)
    ray_address: str | None = None

    @property
    def root(self) -> Path:
        """The service's own folder, beside the store: ``<store>.service``."""
        return self.store.parent / f"{self.store.name}.service"

    @property
    def db_path(self) -> Path:
        return self.root / "queue.sqlite"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    @property
    def concepts_dir(self) -> Path:
        """Concept datasets and label caches: where the CLI keeps them (beside the store)."""
        return self.store.parent / "concepts"

    def make_dirs(self) -> None:
        for d in (self.root, self.models_dir, self.images_dir, self.jobs_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)

    def owner_of(self, token: str) -> str | None:
        """The name of ``token``, compared in constant time with every known token (the time
        does not depend on which one matches, or on how much of one does)."""
        found = None
        given = token.encode()
        for name, known in self.tokens.items():
            if hmac.compare_digest(given, known.encode()):
                found = name
        return found


def read_tokens(path: str | os.PathLike[str] | None, env: str | None = None) -> dict[str, str]:
    """Tokens from a file (``name token`` per line; blank lines and ``#`` comments skipped)
    and from ``PYANALYZER_TOKENS`` (``name:token,name:token``).

    Raises:
        UserInputError: an unreadable file, a malformed line, a duplicate name or token, or a
            token shorter than 16 characters.
    """
    pairs: list[tuple[str, str, str]] = []
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserInputError(f"the tokens file {p} is not a readable file")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserInputError(f"cannot read the tokens file {p}: {exc}") from None
        for i, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise UserInputError(
                    f"{p} line {i}: expected 'name token', got {len(parts)} fields"
                )
            pairs.append((parts[0], parts[1], f"{p} line {i}"))
    if env:
        for item in env.split(","):
            item = item.strip()
            if not item:
                continue
            name, sep, token = item.partition(":")
            if not sep or not name or not token:
                raise UserInputError("PYANALYZER_TOKENS must be 'name:token,name:token'")
            pairs.append((name, token, "PYANALYZER_TOKENS"))
    tokens: dict[str, str] = {}
    for name, token, where in pairs:
        if name in tokens:
            raise UserInputError(f"{where}: the token name {name!r} is given twice")
        if token in tokens.values():
            raise UserInputError(f"{where}: the token of {name!r} is also another name's")
        if len(token) < 16:
            raise UserInputError(f"{where}: the token of {name!r} is shorter than 16 characters")
        tokens[name] = token
    return tokens


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
