"""The HTTP API (FastAPI): models, images, datasets, methods, jobs and their results, under
``/v1``; the OpenAPI document at ``/openapi.json``; a small page at ``/``.

Every error is JSON ``{"detail": "<one line>"}`` (a 500 adds ``request_id``; the log has the
traceback). Handlers never run an analysis: jobs run in the worker processes of
:mod:`.pool`; a job whose result the store already holds is answered at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from pyanalyzer._version import __version__
from pyanalyzer.errors import (
    UserInputError,
    first_line,
)
from pyanalyzer.service.config import LOCAL_OWNER, ServiceConfig
from pyanalyzer.service.middleware import RequestLog, UploadLimit, install_handlers
from pyanalyzer.service.queue import Job, Queue
from pyanalyzer.service.runner import LoadedModels
from pyanalyzer.service.schemas import (
    ERRORS,
    FILE_TYPES,
    DatasetDoc,
    DatasetList,
    ErrorBody,
    FileDoc,
    Health,
    ImageDoc,
    ImageList,
    JobDoc,
    JobList,
    JobRequest,
    MethodDoc,
    MethodList,
    ModelDoc,
    ModelList,
    Progress,
    QueueDepth,
    ResultDoc,
)

LOG = logging.getLogger("pyanalyzer.service")

__all__ = ["create_app"]

COOKIE = "pyanalyzer_token"
MAX_PREPROCESSING_BYTES = 64 * 1024

# ---- the app ---------------------------------------------------------------------------------


class _State:
    """What the handlers share: the config, the queue, the pool and a few loaded models."""

    def __init__(self, config: ServiceConfig, queue: Queue):
        from pyanalyzer.store import Store

        self.config = config
        self.queue = queue
        self.reads = Queue(config.db_path)
        """A connection of its own for the reads of async handlers (status polling, events):
        in WAL mode a reader never waits for a writer, so the event loop never blocks."""
        self.store = Store(config.store)
        self.pool: Any = None
        self.models = LoadedModels(config.models_dir, keep=4)
        self.submit_lock = threading.Lock()
        """Held by whatever may build a model's torch twin (a job's submission, an upload's
        parity check): one at a time, since the loaded models are shared and their lazily built
        parts are not made for threads, and torch is imported (lazily, by the first request
        that needs it) by one thread only: importing it from two threads at once can fail."""

    def model(self, row: dict[str, Any]) -> Any:
        """The loaded model of an uploaded model's row (a few kept loaded)."""
        return self.models.get(row["id"], row["preprocessing"])


def create_app(config: ServiceConfig, *, start_workers: bool = True) -> FastAPI:
    """The service's ASGI app. Its lifespan makes the service folders, queues again the jobs a
    killed server left running, starts the worker pool, and on shutdown stops it (running
    jobs checkpoint and go back to the queue)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        config.make_dirs()
        for leftover in config.tmp_dir.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)
        queue = Queue(config.db_path)
        again = queue.requeue_running()
        if again:
            LOG.info("%d job(s) that were running are queued again", again)
        state = _State(config, queue)
        app.state.service = state
        if start_workers:
            from pyanalyzer.service.pool import WorkerPool

            state.pool = WorkerPool(config, queue, config.workers)
            state.pool.start()
        try:
            yield
        finally:
            if state.pool is not None:
                await asyncio.to_thread(state.pool.stop)
            queue.close()
            state.reads.close()

    app = FastAPI(
        title="pyanalyzer",
        version=__version__,
        description="See what an image CNN saved as ONNX has learned: the analyses of "
        "pyanalyzer as an HTTP job API.",
        lifespan=lifespan,
        docs_url=None,  # the interactive docs load assets from the internet
        redoc_url=None,
    )
    app.add_middleware(RequestLog)
    app.add_middleware(UploadLimit, limit=config.max_upload_mb * 1024 * 1024)
    install_handlers(app)
    app.include_router(_api_router())
    app.include_router(_page_router())
    return app


def _service(request: Request) -> _State:
    state: _State = request.app.state.service
    return state


async def _state(request: Request) -> _State:
    """The shared state (async: a dependency without a thread hand-off)."""
    return _service(request)


_bearer = HTTPBearer(auto_error=False, description="A token of the server's --tokens file.")


async def _owner(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The token's name (the owner of what it uploads and submits)."""
    return _owner_of(request, credentials)


def _owner_of(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str:
    config = _service(request).config
    if not config.tokens:
        return LOCAL_OWNER
    token = credentials.credentials if credentials is not None else request.cookies.get(COOKIE)
    if not token:
        raise HTTPException(401, "a bearer token is required", {"WWW-Authenticate": "Bearer"})
    owner = config.owner_of(token)
    if owner is None:
        raise HTTPException(401, "unknown token", {"WWW-Authenticate": "Bearer"})
    return owner


Owner = Annotated[str, Depends(_owner)]
Sv = Annotated[_State, Depends(_state)]


# ---- documents -------------------------------------------------------------------------------


def _job_doc(job: Job) -> JobDoc:
    base = f"/v1/jobs/{job.id}"
    return JobDoc(
        id=job.id, model=job.model, method=job.method, params=job.params, inputs=job.inputs,
        state=job.state,
        progress=Progress(stage=job.stage, fraction=job.fraction, eta_s=job.eta),
        error=job.error, created=job.created, started=job.started, finished=job.finished,
        links={"self": base, "events": f"{base}/events", "result": f"{base}/result"},
    )  # fmt: skip


def _model_doc(row: dict[str, Any]) -> ModelDoc:
    return ModelDoc(**{k: row[k] for k in ModelDoc.model_fields})


def _job_or_404(sv: _State, job_id: str, owner: str, *, reads: bool = False) -> Job:
    job = (sv.reads if reads else sv.queue).job(job_id, owner)
    if job is None:
        raise HTTPException(404, f"unknown job {job_id!r}")
    return job


def _files_dir(sv: _State, job_id: str) -> Path:
    return sv.config.jobs_dir / job_id / "files"


# ---- /v1 -------------------------------------------------------------------------------------


def _api_router() -> APIRouter:
    r = APIRouter(prefix="/v1", responses=ERRORS)

    @r.get("/health", response_model=Health, tags=["service"])
    def health(sv: Sv) -> Health:
        """Version, compiled kernels, onnxruntime providers, queue depth (no token needed)."""
        import onnxruntime

        from pyanalyzer import _backend

        info = _backend.info()
        return Health(
            status="ok", version=__version__, core=bool(info["core_loaded"]),
            cuda=bool(info["cuda_module_loaded"]) and info["cuda_devices"] > 0,
            cuda_devices=int(info["cuda_devices"]),
            onnxruntime_providers=list(onnxruntime.get_available_providers()),
            queue=QueueDepth(queued=sv.queue.count("queued"), running=sv.queue.count("running")),
            workers=len(sv.pool.pids()) if sv.pool is not None else 0,
            auth=bool(sv.config.tokens),
        )  # fmt: skip

    # ---- models ----
    @r.post(
        "/models",
        response_model=ModelDoc,
        status_code=201,
        tags=["models"],
        responses={200: {"model": ModelDoc, "description": "Uploaded before: that model."}},
    )
    def upload_model(
        sv: Sv,
        owner: Owner,
        response: Response,
        model: Annotated[UploadFile, File(description="The ONNX file (weights inside).")],
        preprocessing: Annotated[
            str | None, Form(description="Preprocessing JSON (as `info` describes it).")
        ] = None,
        name: Annotated[str | None, Form(max_length=200)] = None,
        parity: Annotated[
            bool,
            Form(
                description="Check the onnxruntime/torch parity as `pyanalyzer info` does (the "
                "server imports torch for it); false: the forward-only checks of `pyanalyzer "
                "info --no-parity`."
            ),
        ] = True,
    ) -> ModelDoc:
        """Upload an ONNX model, checked as `load_model` checks an untrusted file (external
        data refused), with the onnxruntime/torch parity checked as `pyanalyzer info` does
        unless `parity` is false; the same bytes (and preprocessing) give the same id (an upload
        of a known model returns it as it was first checked)."""
        prep = _parse_preprocessing(preprocessing)
        shown = _display_name(name or model.filename or "model.onnx")
        with _received(sv, model, shown) as (path, sha, size):
            canonical = "" if prep is None else json.dumps(prep, sort_keys=True)
            model_id = hashlib.sha256(f"{sha}\0{canonical}".encode()).hexdigest()[:32]
            existing = sv.queue.model(owner, model_id)
            if existing is not None:
                response.status_code = 200
                response.headers["Location"] = f"/v1/models/{model_id}"
                return _model_doc(existing)
            from pyanalyzer.model import load_model

            loaded = load_model(path, prep, check_parity=False, external_data=False)
            if parity:
                with sv.submit_lock:  # builds the torch twin (and imports torch the first time)
                    loaded.check_parity()  # as `pyanalyzer info` does; the report is in the info
            info = loaded.summary(gradient=parity)  # without parity: torch is not imported
            info["path"] = shown
            final = sv.config.models_dir / f"{model_id}.onnx"
            if not final.exists():
                os.replace(path, final)
            sv.queue.add_model(
                owner, model_id, name=shown, size=size, sha256=sha, preprocessing=prep, info=info
            )
        row = sv.queue.model(owner, model_id)
        assert row is not None
        response.headers["Location"] = f"/v1/models/{model_id}"
        return _model_doc(row)

    @r.get("/models", response_model=ModelList, tags=["models"])
    def list_models(sv: Sv, owner: Owner) -> ModelList:
        """This token's models."""
        return ModelList(models=[_model_doc(m) for m in sv.queue.models(owner)])

    @r.get("/models/{model_id}", response_model=ModelDoc, tags=["models"])
    def get_model(sv: Sv, owner: Owner, model_id: str) -> ModelDoc:
        """One model: what `pyanalyzer info --json` prints about it."""
        row = sv.queue.model(owner, model_id)
        if row is None:
            raise HTTPException(404, f"unknown model {model_id!r}")
        return _model_doc(row)

    @r.delete("/models/{model_id}", status_code=204, tags=["models"])
    def delete_model(sv: Sv, owner: Owner, model_id: str) -> Response:
        """Forget a model (its stored results stay in the store)."""
        if not sv.queue.remove_model(owner, model_id):
            raise HTTPException(404, f"unknown model {model_id!r}")
        if sv.queue.model_users(model_id) == 0:
            with contextlib.suppress(FileNotFoundError):
                (sv.config.models_dir / f"{model_id}.onnx").unlink()
        return Response(status_code=204)

    # ---- images and datasets ----
    @r.post(
        "/images",
        response_model=ImageDoc,
        status_code=201,
        tags=["inputs"],
        responses={200: {"model": ImageDoc, "description": "Uploaded before: that image."}},
    )
    def upload_image(
        sv: Sv,
        owner: Owner,
        response: Response,
        image: Annotated[UploadFile, File(description="A PNG, JPEG, ... image.")],
    ) -> ImageDoc:
        """Upload an image for deconv, invert and patches jobs (content-addressed)."""
        from pyanalyzer.data.images import load_image

        shown = _display_name(image.filename or "image")
        with _received(sv, image, shown) as (path, sha, size):
            img = load_image(path)
            suffix = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "GIF": ".gif",
                      "TIFF": ".tif", "WEBP": ".webp"}.get(str(img.format), ".img")  # fmt: skip
            image_id = sha[:32]
            final = sv.config.images_dir / f"{image_id}{suffix}"
            if not final.exists():
                os.replace(path, final)
            if sv.queue.image(owner, image_id) is None:
                sv.queue.add_image(owner, image_id, name=shown, size=size, suffix=suffix)
            else:
                response.status_code = 200
        row = sv.queue.image(owner, image_id)
        assert row is not None
        response.headers["Location"] = f"/v1/images/{image_id}"
        return ImageDoc(id=row["id"], name=row["name"], size=row["size"], created=row["created"])

    @r.get("/images", response_model=ImageList, tags=["inputs"])
    def list_images(sv: Sv, owner: Owner) -> ImageList:
        """This token's images."""
        return ImageList(
            images=[
                ImageDoc(id=i["id"], name=i["name"], size=i["size"], created=i["created"])
                for i in sv.queue.images(owner)
            ]
        )

    @r.get("/datasets", response_model=DatasetList, tags=["inputs"])
    def datasets(sv: Sv, owner: Owner) -> DatasetList:
        """Concept datasets jobs may dissect against: the synthetic one and the Broden-format
        folders under --datasets."""
        from pyanalyzer.service.runner import DEFAULT_CONCEPT_IMAGES, list_datasets

        found = [
            DatasetDoc(
                name="synthetic", kind="synthetic", images=DEFAULT_CONCEPT_IMAGES,
                description="Synthetic scenes made on first use (inputs.n_images, "
                "inputs.seed), with object, part, colour and texture concepts.",
            )
        ]  # fmt: skip
        for name in list_datasets(sv.config):
            n = _count_lines(sv.config.datasets / name / "index.csv")  # type: ignore[operator]
            found.append(
                DatasetDoc(name=name, kind="broden", images=n, description="Broden-format folder")
            )
        return DatasetList(datasets=found)

    @r.get("/methods", response_model=MethodList, tags=["jobs"])
    def methods(sv: Sv, owner: Owner) -> MethodList:
        """Every analysis with its params' JSON Schema."""
        from pyanalyzer.methods import analyses

        with sv.submit_lock:  # the gradient methods' modules import torch (the first time)
            found = analyses()
        return MethodList(methods=[MethodDoc(**a.describe()) for a in found.values()])

    # ---- jobs ----
    @r.post(
        "/jobs",
        response_model=JobDoc,
        status_code=202,
        tags=["jobs"],
        responses={200: {"model": JobDoc, "description": "Answered from the store."}},
    )
    def submit(sv: Sv, owner: Owner, body: JobRequest, response: Response) -> JobDoc:
        """Submit a job: 202 with its Location, or 200 with the finished job when the store
        already holds the result."""
        from pyanalyzer.service.runner import NotStored, prepare_job, run_prepared

        active = sv.queue.count("queued", owner) + sv.queue.count("running", owner)
        if active >= sv.config.max_queued:
            raise HTTPException(
                429, f"{active} jobs are queued or running for this token (at most "
                f"{sv.config.max_queued}); wait for some to finish"
            )  # fmt: skip
        row = sv.queue.model(owner, body.model)
        if row is None:
            raise HTTPException(404, f"unknown model {body.model!r}")
        inputs = body.inputs.model_dump(exclude_unset=True)
        job_id = secrets.token_hex(8)
        files = _files_dir(sv, job_id)
        # One submission at a time: the loaded models are shared, and their lazily built parts
        # (the torch twin) are not made for threads.
        with sv.submit_lock:
            prepared = prepare_job(
                sv.model(row), body.method, body.params, inputs, config=sv.config,
                store=sv.store, image_path=lambda i: _image_path(sv, owner, i),
                model_of=lambda i: _uploaded_model(sv, owner, i),
            )  # fmt: skip
            try:
                doc = run_prepared(prepared, files, stored_only=True)
            except BaseException as exc:
                shutil.rmtree(files.parent, ignore_errors=True)  # nothing half-written stays
                if not isinstance(exc, NotStored):
                    raise
                doc = None
        if doc is None:
            job = sv.queue.submit(
                owner, body.model, body.method, body.params, inputs, job_id=job_id
            )
        else:
            from pyanalyzer.service.worker import write_arrays

            write_arrays(prepared.analysis, files.parent / "arrays.h5")
            job = sv.queue.submit(
                owner, body.model, body.method, body.params, inputs, job_id=job_id,
                state="done", result=doc,
            )  # fmt: skip
            response.status_code = 200
        response.headers["Location"] = f"/v1/jobs/{job.id}"
        return _job_doc(job)

    @r.get("/jobs", response_model=JobList, tags=["jobs"])
    async def list_jobs(sv: Sv, owner: Owner) -> JobList:
        """This token's jobs, newest first."""
        return JobList(jobs=[_job_doc(j) for j in sv.reads.jobs(owner)])

    @r.get("/jobs/{job_id}", response_model=JobDoc, tags=["jobs"])
    async def get_job(sv: Sv, owner: Owner, job_id: str) -> JobDoc:
        """A job's state and progress (stage, fraction, ETA), or its error line."""
        return _job_doc(_job_or_404(sv, job_id, owner, reads=True))

    @r.delete("/jobs/{job_id}", response_model=JobDoc, tags=["jobs"])
    def cancel_job(sv: Sv, owner: Owner, job_id: str) -> JobDoc:
        """Cancel a job: a queued one at once, a running one at its next progress step (what
        it checkpointed stays in the store)."""
        job = sv.queue.cancel(job_id, owner)
        if job is None:
            raise HTTPException(404, f"unknown job {job_id!r}")
        return _job_doc(job)

    @r.get(
        "/jobs/{job_id}/events",
        tags=["jobs"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "Progress."}},
    )
    async def events(sv: Sv, owner: Owner, job_id: str, request: Request) -> StreamingResponse:
        """The job's state and progress as server-sent events (``event: job``), until it
        ends."""
        _job_or_404(sv, job_id, owner, reads=True)

        async def stream() -> AsyncIterator[bytes]:
            last, beat = "", time.monotonic()
            while True:
                job = sv.reads.job(job_id, owner)
                if job is None:
                    return
                text = _job_doc(job).model_dump_json()
                if text != last:
                    last, beat = text, time.monotonic()
                    yield f"event: job\ndata: {text}\n\n".encode()
                elif time.monotonic() - beat > 10:
                    beat = time.monotonic()
                    yield b": keep-alive\n\n"
                if job.finished_state or await request.is_disconnected():
                    return
                await asyncio.sleep(0.25)

        return StreamingResponse(stream(), media_type="text/event-stream")

    @r.get(
        "/jobs/{job_id}/result",
        response_model=ResultDoc,
        tags=["results"],
        responses={409: {"model": ErrorBody, "description": "The job has no result (yet)."}},
    )
    def result(sv: Sv, owner: Owner, job_id: str) -> ResultDoc:
        """A finished job's summary (what the CLI's --json prints) and its files' URLs."""
        job = _job_or_404(sv, job_id, owner)
        if job.state != "done" or job.result is None:
            detail = f"job {job_id} is {job.state}"
            raise HTTPException(409, detail + (
                f": {job.error}" if job.error else "; its result is not ready"))  # fmt: skip
        base = f"/v1/jobs/{job.id}"
        folder = _files_dir(sv, job.id)
        files = [
            FileDoc(path=p, url=f"{base}/files/{p}", size=_size(folder / p))
            for p in job.result.get("files", [])
        ]
        arrays = sv.config.jobs_dir / job.id / "arrays.h5"
        return ResultDoc(
            job=_job_doc(job), method=job.result["method"],
            from_store=bool(job.result["from_store"]), resumed=bool(job.result["resumed"]),
            summary=job.result["summary"], files=files,
            arrays_url=f"{base}/arrays.h5" if arrays.is_file() else None,
        )  # fmt: skip

    @r.get(
        "/jobs/{job_id}/files/{path:path}",
        tags=["results"],
        response_class=FileResponse,
        responses={
            200: {"content": {t: {} for t in FILE_TYPES.values()}, "description": "A file."}
        },
    )
    def job_file(sv: Sv, owner: Owner, job_id: str, path: str) -> FileResponse:
        """A file the job wrote (PNG, CSV, JSON, HTML); confined to the job's folder."""
        _job_or_404(sv, job_id, owner)
        target = _confined(_files_dir(sv, job_id), path)
        media_type = FILE_TYPES.get(target.suffix.lower(), FILE_TYPES[""])
        return FileResponse(target, media_type=media_type)

    @r.get(
        "/jobs/{job_id}/arrays.h5",
        tags=["results"],
        response_class=FileResponse,
        responses={200: {"content": {"application/x-hdf5": {}}, "description": "HDF5."}},
    )
    def job_arrays(sv: Sv, owner: Owner, job_id: str) -> FileResponse:
        """The result's arrays as one HDF5 file."""
        job = _job_or_404(sv, job_id, owner)
        path = sv.config.jobs_dir / job.id / "arrays.h5"
        if job.state != "done" or not path.is_file():
            raise HTTPException(404, f"job {job_id} has no arrays (it is {job.state})")
        return FileResponse(
            path, media_type="application/x-hdf5", filename=f"{job.method}-{job.id}.h5"
        )

    return r


def _page_router() -> APIRouter:
    r = APIRouter(include_in_schema=False)

    @r.get("/", response_class=HTMLResponse)
    def index(request: Request) -> HTMLResponse:
        from pyanalyzer.service.page import login_page, render_index

        sv = _service(request)
        try:
            owner = _owner_of(request, None)
        except HTTPException:
            return HTMLResponse(login_page(), status_code=401)
        return HTMLResponse(render_index(sv.queue, owner, sv.config.jobs_dir))

    @r.post("/login")
    def login(request: Request, token: Annotated[str, Form(max_length=512)]) -> Response:
        sv = _service(request)
        if sv.config.tokens and sv.config.owner_of(token) is None:
            from pyanalyzer.service.page import login_page

            return HTMLResponse(login_page("unknown token"), status_code=401)
        response = Response(status_code=303, headers={"Location": "/"})
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    return r


# ---- helpers ---------------------------------------------------------------------------------


def _parse_preprocessing(text: str | None) -> dict[str, Any] | None:
    if text is None or not text.strip():
        return None
    if len(text) > MAX_PREPROCESSING_BYTES:
        raise UserInputError(f"preprocessing: more than {MAX_PREPROCESSING_BYTES} bytes")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise UserInputError(f"preprocessing is not valid JSON: {first_line(exc)}") from None
    if not isinstance(data, dict):
        raise UserInputError("preprocessing must be a JSON object")
    return data


def _display_name(name: str) -> str:
    base = os.path.basename(name.replace("\\", "/")) or "upload"
    return "".join(c if c.isprintable() else "?" for c in base)[:200]


@contextlib.contextmanager
def _received(sv: _State, upload: UploadFile, shown: str) -> Iterator[tuple[Path, str, int]]:
    """An upload saved to a private temporary folder: ``(path, sha256, size)``; the folder is
    removed at the end. Messages of bad input name the upload, not the server's path."""
    work = sv.config.tmp_dir / f"upload-{secrets.token_hex(8)}"
    work.mkdir(parents=True)
    path = work / "upload"
    try:
        sha, size = _save(upload, path)
        yield path, sha, size
    except UserInputError as exc:
        message = str(exc).replace(repr(str(path)), repr(shown)).replace(str(path), shown)
        raise UserInputError(message) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _save(upload: UploadFile, path: Path) -> tuple[str, int]:
    """Copy an upload to ``path``; its sha256 and size."""
    h, size = hashlib.sha256(), 0
    upload.file.seek(0)
    with open(path, "wb") as out:
        while chunk := upload.file.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
            out.write(chunk)
    if size == 0:
        raise UserInputError("the upload is empty")
    return h.hexdigest(), size


def _image_path(sv: _State, owner: str, image_id: str) -> Path:
    row = sv.queue.image(owner, image_id)
    if row is None:
        raise UserInputError(f"unknown image {image_id!r} (upload it with POST /v1/images)")
    return sv.config.images_dir / f"{image_id}{row['suffix']}"


def _uploaded_model(sv: _State, owner: str, model_id: str) -> Any:
    """Another model of the owner's, loaded (a job's ``params.other``)."""
    row = sv.queue.model(owner, model_id)
    if row is None:
        raise UserInputError(f"unknown model {model_id!r} (upload it with POST /v1/models)")
    return sv.model(row)


def _confined(root: Path, relative: str) -> Path:
    """``root/relative`` when it is a regular file inside ``root`` reached without ``..`` or
    symbolic links; 404 otherwise."""
    parts = relative.split("/")
    if (
        not relative
        or "\0" in relative
        or "\\" in relative
        or relative.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise HTTPException(404, "no such file")
    target = root.joinpath(*parts)
    probe = root
    try:  # a name too long for the file system (ENAMETOOLONG) is no such file either
        for p in parts:
            probe = probe / p
            if probe.is_symlink():
                raise HTTPException(404, "no such file")
        if not target.is_file():
            raise HTTPException(404, "no such file")
    except OSError:
        raise HTTPException(404, "no such file") from None
    return target


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _count_lines(path: Path) -> int | None:
    try:
        with open(path, "rb") as fh:
            return max(0, sum(1 for _ in fh) - 1)
    except OSError:
        return None
