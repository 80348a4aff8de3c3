"""``pyanalyzer cache``: list and remove results in the store."""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING, Any

import click

from pyanalyzer.cli.options import store_option

if TYPE_CHECKING:
    from pyanalyzer.store import EntryInfo

__all__ = ["cache"]

_HEX = re.compile(r"[0-9a-f]{1,64}")


@click.group()
def cache() -> None:
    """List and remove cached results in the result store."""


@cache.command("ls")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def cache_ls(store_path: str | None, as_json: bool) -> None:
    """List the store's entries."""
    from pyanalyzer.cli.options import open_store

    store = open_store(store_path, write=False)  # listing a read-only store is fine
    entries = store.entries()
    if as_json:
        click.echo(json.dumps([_entry_dict(e) for e in entries], indent=2))
        return
    click.echo(f"{store.path}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")
    for e in entries:
        d = _entry_dict(e)
        click.echo(
            f"  {d['key'][:40]}  {d['method']:<16} {d['model_file']:<24} "
            f"{_human(d['size'])}  {d['created']}"
        )


def _entry_dict(e: EntryInfo) -> dict[str, Any]:
    key = e.key
    return {
        "key": f"{key.model_sha256[:12]}/{key.method}/{key.params_sha256[:12]}",
        "model_sha256": key.model_sha256,
        "method": key.method,
        "params_sha256": key.params_sha256,
        "model_file": e.model_file,
        "created": e.created,
        "size": int(e.size),
        "version": e.version,
    }


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:7.1f} {unit}"
        size /= 1024
    return str(n)


@cache.command("rm")
@store_option
@click.option(
    "--model",
    "model",
    help="Remove entries of this model (a path to it, or a prefix of its sha256).",
)
@click.option("--method", help="Remove entries of this method.")
@click.option("--all", "all_", is_flag=True, help="Remove every entry (nothing else does).")
@click.argument("keys", nargs=-1)
def cache_rm(
    store_path: str | None, model: str | None, method: str | None, all_: bool, keys: tuple[str, ...]
) -> None:
    """Remove entries: by KEYS (as `cache ls` prints them, prefixes allowed), --model,
    --method, or every entry with --all.

    An empty KEY, --model or --method (an unset shell variable) is an error, never "all".
    """
    from pyanalyzer.errors import UserInputError
    from pyanalyzer.store import Store, file_sha256

    for k in keys:
        if not k.strip():
            raise UserInputError("an empty KEY matches every entry; to remove them all, pass --all")
    for flag, value in (("--model", model), ("--method", method)):
        if value is not None and not value.strip():
            raise UserInputError(f"{flag} is empty; to remove every entry, pass --all")
    if all_ and (keys or model or method):
        raise UserInputError("--all removes every entry: give it alone, without KEYS or filters")
    if not (keys or model or method or all_):
        raise UserInputError("say what to remove: KEYS, --model, --method or --all")
    sha = None
    if model is not None:
        if os.path.isfile(model):
            sha = file_sha256(model)
        elif _HEX.fullmatch(model.strip().lower()):
            sha = model.strip().lower()
        else:
            raise UserInputError(
                f"--model {model!r} is neither a model file nor a sha256 prefix (hex digits)"
            )
    store = Store(store_path)
    if store.exists():
        store.check_writable()  # a read-only store: one line, nothing removed
    removed = 0
    if all_:
        removed = store.clear()
    else:
        entries = store.entries()
        chosen = {}
        if model is not None or method is not None:
            for e in entries:
                if (sha is None or e.key.model_sha256.startswith(sha)) and (
                    method is None or e.key.method == method
                ):
                    chosen[e.key] = e
        for k in keys:
            matches = [e for e in entries if _entry_dict(e)["key"].startswith(k)]
            if not matches:
                raise UserInputError(f"no store entry matches {k!r} (see `pyanalyzer cache ls`)")
            chosen.update((e.key, e) for e in matches)
        removed = sum(store.remove(key) for key in sorted(chosen))
    click.echo(f"removed {removed} entr{'y' if removed == 1 else 'ies'} from {store.path}")
