"""The analysis service: pyanalyzer's analyses as an HTTP job API that auditing tools embed.

``pyanalyzer serve`` runs it (FastAPI on uvicorn); :class:`pyanalyzer.client.Client` talks to
it. The parts:

* :mod:`.app` — the API under ``/v1`` (models, images, datasets, methods, jobs, results) and
  its tokens; :mod:`.schemas` — its request and answer bodies; :mod:`.middleware` — the error
  answers (one line of JSON), the request log and the upload limit; :mod:`.page` — the HTML
  page at ``/``;
* :mod:`.queue` — models, images and the job queue in SQLite beside the store;
* :mod:`.pool` and :mod:`.worker` — the worker processes that run jobs, and their supervisor;
* :mod:`.runner` — one job: the analysis and its inputs from ``{method, params, inputs}``, run
  through the store, its files written by the report writers (what the CLI does);
* :mod:`.config` — settings, folders and tokens.

The service is a front end, as the CLI: it builds analyses from their params, runs them and
hands results to :mod:`pyanalyzer.report`; it never builds store keys or packs arrays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyanalyzer.service.config import ServiceConfig

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["ServiceConfig", "create_app"]


def create_app(config: ServiceConfig, *, start_workers: bool = True) -> FastAPI:
    """The ASGI app (:func:`.app.create_app`), imported on first use (FastAPI is not needed
    by the library)."""
    from pyanalyzer.service.app import create_app as make

    return make(config, start_workers=start_workers)
