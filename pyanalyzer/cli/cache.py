"""``pyanalyzer cache``: list and remove results in the store."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import click

from pyanalyzer.cli.options import store_option

if TYPE_CHECKING:
    from pyanalyzer.store import EntryInfo

__all__ = ["cache"]


@click.group()
def cache() -> None:
    """List and remove cached results in the result store."""


@cache.command("ls")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def cache_ls(store_path: str | None, as_json: bool) -> None:
    """List the store's entries."""
    from pyanalyzer.store import Store

    store = Store(store_path)
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
    "--model", "model", help="Remove entries of this model (a path to it, or its sha256 prefix)."
)
@click.option("--method", help="Remove entries of this method.")
@click.option("--all", "all_", is_flag=True, help="Remove every entry.")
@click.argument("keys", nargs=-1)
def cache_rm(
    store_path: str | None, model: str | None, method: str | None, all_: bool, keys: tuple[str, ...]
) -> None:
    """Remove entries: by KEYS (as `cache ls` prints them, prefixes allowed), --model,
    --method, or --all."""
    from pyanalyzer.errors import UserInputError
    from pyanalyzer.store import Store, file_sha256

    if not (keys or model or method or all_):
        raise UserInputError("say what to remove: KEYS, --model, --method or --all")
    store = Store(store_path)
    removed = 0
    if all_:
        removed = store.clear()
    else:
        sha = None
        if model is not None:
            sha = file_sha256(model) if os.path.isfile(model) else model.lower()
        if model is not None or method is not None:
            removed += store.remove_where(model_sha256=sha, method=method)
        for k in keys:
            matches = [e for e in store.entries() if _entry_dict(e)["key"].startswith(k)]
            if not matches:
                raise UserInputError(f"no store entry matches {k!r} (see `pyanalyzer cache ls`)")
            for e in matches:
                store.remove(e.key)
                removed += 1
    click.echo(f"removed {removed} entr{'y' if removed == 1 else 'ies'} from {store.path}")
