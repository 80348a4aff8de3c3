"""``pyanalyzer serve``: the analysis service (FastAPI on uvicorn), see :mod:`pyanalyzer.service`."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import click

from pyanalyzer.cli.options import open_store, store_option

__all__ = ["serve"]


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="Port to listen on (0: a free one, printed at start).",
)
@store_option
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Worker processes running jobs.",
)
@click.option(
    "--tokens",
    "tokens_file",
    type=click.Path(dir_okay=False),
    help="Bearer tokens, 'name token' per line (also $PYANALYZER_TOKENS as name:token,...).",
)
@click.option(
    "--datasets",
    type=click.Path(file_okay=False),
    help="A folder whose Broden-format subfolders jobs may dissect against.",
)
@click.option(
    "--max-upload-mb",
    type=click.IntRange(1, 1 << 20),
    default=512,
    show_default=True,
    help="Largest model or image upload (MiB).",
)
@click.option(
    "--max-queued",
    type=click.IntRange(1, 1 << 20),
    default=64,
    show_default=True,
    help="Jobs one token may have queued or running at once.",
)
@click.option(
    "--ray-address",
    metavar="ADDR",
    help="Run the shards of the jobs that split their work (dissect, actmax, patches, atlas) "
    "on this Ray cluster (started with `ray start --head`); each worker connects once.",
)
def serve(
    host: str,
    port: int,
    store_path: str | None,
    workers: int,
    tokens_file: str | None,
    datasets: str | None,
    max_upload_mb: int,
    max_queued: int,
    ray_address: str | None,
) -> None:
    """Run the analysis service: an HTTP job API over every analysis.

    Upload models (POST /v1/models) and images, submit jobs (POST /v1/jobs {model, method,
    params, inputs}), follow them (GET /v1/jobs/ID, /events) and fetch their results and
    files; the API is described at /openapi.json, a page at / lists your models and jobs.
    Jobs run in --workers processes, through the same store as the CLI (a stored result is
    answered at once). Without --tokens the server binds loopback addresses only. Ctrl-C or
    SIGTERM stops it: running jobs checkpoint and resume at the next start.
    """  # fmt: skip
    import uvicorn

    from pyanalyzer.errors import UserInputError
    from pyanalyzer.service import create_app
    from pyanalyzer.service.config import ServiceConfig, is_loopback, read_tokens

    tokens = read_tokens(tokens_file, os.environ.get("PYANALYZER_TOKENS"))
    if not tokens and not is_loopback(host):
        raise UserInputError(
            f"refusing to bind {host} without tokens: give --tokens FILE (or "
            "$PYANALYZER_TOKENS), or bind a loopback address (127.0.0.1, ::1)"
        )
    if ray_address:
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise UserInputError("--ray-address needs Ray: pip install 'pyanalyzer[ray]'")
    if datasets is not None and not Path(datasets).is_dir():
        raise UserInputError(f"--datasets {datasets} is not a folder")
    store = open_store(store_path)
    sock = _listen(host.strip("[]"), port)  # before anything is created: a port in use is one line
    config = ServiceConfig(
        store=Path(store.path).resolve(),
        datasets=None if datasets is None else Path(datasets).resolve(),
        workers=workers,
        max_upload_mb=max_upload_mb,
        max_queued=max_queued,
        tokens=tokens,
        ray_address=ray_address or None,
    )
    config.root.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("pyanalyzer.service").setLevel(logging.INFO)
    logging.getLogger("pyanalyzer").setLevel(logging.INFO)
    app = create_app(config)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host=host.strip("[]"), port=sock.getsockname()[1], access_log=False,
            log_level="info", timeout_graceful_shutdown=40,
        )
    )  # fmt: skip
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    logging.getLogger("pyanalyzer.service").info(
        "listening on http://%s:%d (Ctrl-C to stop)", shown, bound[1]
    )
    server.run(sockets=[sock])


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` for uvicorn to serve on.

    Raises:
        UserInputError: the address cannot be bound (in use, not this machine's, not allowed).
    """
    from pyanalyzer.errors import UserInputError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserInputError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UserInputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock
