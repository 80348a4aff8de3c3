"""A Python client of the analysis service (``pyanalyzer serve``), built on httpx.

:class:`Client` wraps the ``/v1`` API: upload a model and images, submit a job, wait for it
(with a progress bar on a terminal), fetch its summary and download its files::

    from pyanalyzer.client import Client

    with Client("http://127.0.0.1:8000", token=None) as client:
        model = client.upload_model("models/default.onnx")
        job = client.submit(model["id"], "dissect", {"layers": ["relu5"]}, {"n_images": 200})
        client.wait(job)                               # raises if it failed or was cancelled
        print(client.result(job["id"])["summary"])
        client.download(job["id"], "out/dissect")      # every file, plus arrays.h5

Errors raise the library's exceptions where they mean the same thing: a request the server
refuses as bad input (422, 400) or too large (413) raises :class:`BadRequestError`, which is a
:class:`~pyanalyzer.errors.UserInputError` with the server's one-line message (the message the
library raises for the same parameters); the others raise a :class:`ServiceError` subclass
carrying the HTTP ``status`` and the server's ``detail``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import IO, Any
from urllib.parse import quote

import httpx

from pyanalyzer.errors import PyanalyzerError, UserInputError

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "JobCancelledError",
    "JobEndedError",
    "JobFailedError",
    "NotFoundError",
    "NotReadyError",
    "ServiceError",
    "TooManyJobsError",
    "UploadTooLargeError",
]

FINISHED = ("done", "failed", "cancelled")
"""The states a job ends in."""

_CHUNK = 1 << 20
_BAR_STEPS = 1000


# ---- errors ----------------------------------------------------------------------------------


class ServiceError(PyanalyzerError):
    """The service refused a request or could not be reached.

    The message is one line: the server's ``detail`` (with the request id of a 5xx answer), or
    for a connection failure what failed and the URL.

    Attributes:
        status: the HTTP status, or None when no answer came (connection failure) or the
            error is not an HTTP one (a failed or cancelled job).
        detail: the server's one-line ``detail`` (the message without additions).
        request_id: the server's request id (find it in the server's log), when it gave one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        detail: str | None = None,
        request_id: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.detail = message if detail is None else detail
        self.request_id = request_id


class BadRequestError(ServiceError, UserInputError):
    """422 (or 400): the server refused the input (unknown method, bad params or inputs, a
    broken model file...); a :class:`~pyanalyzer.errors.UserInputError`, with the same
    one-line message the library raises for the same mistake."""


class UploadTooLargeError(BadRequestError):
    """413: the upload is larger than the server's ``--max-upload-mb``."""


class AuthenticationError(ServiceError):
    """401: the bearer token is missing or unknown to the server."""


class NotFoundError(ServiceError):
    """404: no such model, image, job or file (or it belongs to another token)."""


class NotReadyError(ServiceError):
    """409: the job has no result: it is queued or running, or it failed or was cancelled
    (the message says which)."""


class TooManyJobsError(ServiceError):
    """429: this token has as many jobs queued or running as the server allows
    (``--max-queued``); wait for some to finish."""


class JobEndedError(ServiceError):
    """The job ended other than ``done`` (base of the two below).

    Attributes:
        job: the job document as the server last returned it.
    """

    def __init__(self, message: str, *, job: dict[str, Any]):
        super().__init__(message)
        self.job = job


class JobFailedError(JobEndedError):
    """The job ended in ``failed``; the message is the job's error line."""


class JobCancelledError(JobEndedError):
    """The job ended in ``cancelled`` (what it checkpointed stays in the server's store)."""


_BY_STATUS: dict[int, type[ServiceError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    409: NotReadyError,
    413: UploadTooLargeError,
    422: BadRequestError,
    429: TooManyJobsError,
}


def _one_line(text: str, limit: int = 1000) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


# ---- the client ------------------------------------------------------------------------------


ProgressArg = bool | Callable[[dict[str, Any]], None] | None


class Client:
    """A connection to a ``pyanalyzer serve`` server.

    Args:
        url: the server's base URL (``http://127.0.0.1:8000``; a path prefix behind a reverse
            proxy is kept).
        token: a bearer token of the server's ``--tokens`` file, or None for a server started
            without tokens. Each token sees only the models, images and jobs it created.
        timeout: seconds to wait for the connection and for each read or write of a request
            (not the time a job takes: see :meth:`wait`).

    Use it as a context manager, or call :meth:`close`.

    Raises:
        UserInputError: the URL is not an ``http://`` or ``https://`` URL, or the timeout is
            not a positive number.
    """

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 30.0):
        text = str(url).strip()
        if not text.lower().startswith(("http://", "https://")):
            raise UserInputError(f"the service URL must start with http:// or https://: {url!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise UserInputError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.url = text.rstrip("/")
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=float(timeout), follow_redirects=False
        )

    # ---- lifetime ----
    def close(self) -> None:
        """Close the connections (the client is unusable afterwards)."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # ---- requests ----
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request; the response when it succeeded, else the mapped exception."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None
        _check(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ServiceError(
                f"the server at {self.url} answered {method} {path} with something other than "
                "JSON (is it a pyanalyzer service?)",
                status=response.status_code,
            ) from None

    @contextlib.contextmanager
    def _stream(self, path: str) -> Iterator[httpx.Response]:
        try:
            with self._http.stream("GET", path) as response:
                if not response.is_success:
                    response.read()
                    _check(response)
                yield response
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None

    def _transport_error(self, exc: httpx.TransportError) -> ServiceError:
        if isinstance(exc, httpx.TimeoutException):
            what = f"no answer from the pyanalyzer service at {self.url} in time"
        elif isinstance(exc, httpx.ConnectError):
            what = f"cannot connect to the pyanalyzer service at {self.url}"
        else:
            what = f"the connection to the pyanalyzer service at {self.url} failed"
        reason = _one_line(str(exc), 200) or type(exc).__name__
        return ServiceError(f"{what}: {reason}")

    # ---- service ----
    def health(self) -> dict[str, Any]:
        """The server's version, compiled kernels, onnxruntime providers, queue depth, live
        workers and whether it needs a token (no token needed)."""
        doc: dict[str, Any] = self._json("GET", "/v1/health")
        return doc

    # ---- models ----
    def upload_model(
        self,
        path: str | os.PathLike[str],
        preprocessing: Mapping[str, Any] | None = None,
        name: str | None = None,
        *,
        parity: bool = True,
    ) -> dict[str, Any]:
        """Upload an ONNX model (its weights inside the file).

        The server checks it as :func:`pyanalyzer.load_model` checks an untrusted file; the
        same bytes with the same preprocessing give the same id (uploading again returns the
        model already there). With ``parity`` the server also compares its torch twin with
        onnxruntime as ``pyanalyzer info`` does; the first such upload after the server
        started imports torch there (seconds; give a loaded machine a longer ``timeout``).

        Args:
            path: the ONNX file.
            preprocessing: the preprocessing as a JSON object (what ``pyanalyzer info --json``
                shows under ``preprocessing``, or ``{"preset": "caffe"}``...), or None for
                what the server infers.
            name: the name the server lists (default: the file's name).
            parity: check the onnxruntime/torch parity (``False``: the forward-only checks of
                ``pyanalyzer info --no-parity``; the server does not import torch for it).

        Returns:
            the model document: ``id``, ``name``, ``size``, ``sha256``, ``preprocessing``,
            ``created`` and ``info`` (what ``pyanalyzer info --json`` prints).

        Raises:
            UserInputError: the file cannot be read here; BadRequestError (a UserInputError):
            the server refused the model or the preprocessing; UploadTooLargeError: the file
            is over the server's limit.
        """
        form: dict[str, str] = {}
        if preprocessing is not None:
            to_dict = getattr(preprocessing, "to_dict", None)
            spec = to_dict() if callable(to_dict) else dict(preprocessing)
            form["preprocessing"] = json.dumps(spec)
        if name is not None:
            form["name"] = name
        if not parity:
            form["parity"] = "false"
        with _open_upload(path, "model") as (filename, fh):
            doc: dict[str, Any] = self._json(
                "POST", "/v1/models", files={"model": (filename, fh)}, data=form
            )
        return doc

    def models(self) -> list[dict[str, Any]]:
        """This token's models (the documents :meth:`upload_model` returns)."""
        found: list[dict[str, Any]] = self._json("GET", "/v1/models")["models"]
        return found

    def model(self, model_id: str) -> dict[str, Any]:
        """One model's document.

        Raises:
            NotFoundError: no such model for this token.
        """
        doc: dict[str, Any] = self._json("GET", f"/v1/models/{_segment(model_id)}")
        return doc

    def delete_model(self, model_id: str) -> None:
        """Forget a model (results computed from it stay in the server's store; jobs still
        queued on it fail).

        Raises:
            NotFoundError: no such model for this token.
        """
        self._request("DELETE", f"/v1/models/{_segment(model_id)}")

    # ---- inputs ----
    def upload_image(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Upload an image for the deconv, guided, saliency, patches and inversion jobs
        (``inputs={"images": [id, ...]}``); the same bytes give the same id.

        Returns:
            the image document: ``id``, ``name``, ``size``, ``created``.

        Raises:
            UserInputError: the file cannot be read here; BadRequestError: the server cannot
            read it as an image; UploadTooLargeError: it is over the server's limit.
        """
        with _open_upload(path, "image") as (filename, fh):
            doc: dict[str, Any] = self._json("POST", "/v1/images", files={"image": (filename, fh)})
        return doc

    def images(self) -> list[dict[str, Any]]:
        """This token's images."""
        found: list[dict[str, Any]] = self._json("GET", "/v1/images")["images"]
        return found

    def datasets(self) -> list[dict[str, Any]]:
        """The concept datasets a dissect or net2vec job may name in ``inputs["dataset"]``:
        ``synthetic`` and the Broden-format folders under the server's ``--datasets``."""
        found: list[dict[str, Any]] = self._json("GET", "/v1/datasets")["datasets"]
        return found

    def methods(self) -> list[dict[str, Any]]:
        """Every analysis the server runs: ``method``, ``summary``, ``inputs`` (what it takes)
        and ``params`` (their JSON Schema)."""
        found: list[dict[str, Any]] = self._json("GET", "/v1/methods")["methods"]
        return found

    # ---- jobs ----
    def submit(
        self,
        model: str | Mapping[str, Any],
        method: str,
        params: Mapping[str, Any] | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Submit a job. The server checks the params against the model before queueing it;
        when its store already holds the result the job comes back ``done`` at once.

        Args:
            model: an uploaded model's id (or its document).
            method: one of :meth:`methods` (``dissect``, ``actmax``, ``deconv``...).
            params: the method's parameters, as the library's analysis class takes them.
            inputs: what the job runs on: ``dataset``, ``n_images``, ``seed`` (concept
                datasets), ``images`` (uploaded image ids), as the method takes.

        Returns:
            the job document (``id``, ``state``, ``progress``...).

        Raises:
            BadRequestError: unknown method, bad params or inputs (the library's message);
            NotFoundError: unknown model; TooManyJobsError: too many jobs queued.
        """
        model_id = model.get("id") if isinstance(model, Mapping) else model
        if not isinstance(model_id, str):
            raise UserInputError(f"model must be a model id or a model document, got {model!r}")
        body = {
            "model": model_id,
            "method": method,
            "params": dict(params or {}),
            "inputs": dict(inputs or {}),
        }
        doc: dict[str, Any] = self._json("POST", "/v1/jobs", json=body)
        return doc

    def job(self, job_id: str | Mapping[str, Any]) -> dict[str, Any]:
        """A job's document: ``state`` (queued, running, done, failed, cancelled), ``progress``
        (``stage``, ``fraction``, ``eta_s``) and ``error`` (the one line of a failed job).

        Raises:
            NotFoundError: no such job for this token.
        """
        doc: dict[str, Any] = self._json("GET", f"/v1/jobs/{_job_id(job_id)}")
        return doc

    def jobs(self) -> list[dict[str, Any]]:
        """This token's jobs, newest first."""
        found: list[dict[str, Any]] = self._json("GET", "/v1/jobs")["jobs"]
        return found

    def cancel(self, job_id: str | Mapping[str, Any]) -> dict[str, Any]:
        """Cancel a job: a queued one at once, a running one at its next progress step. A job
        that already ended is left as it is.

        Returns:
            the job document as it is now.

        Raises:
            NotFoundError: no such job for this token.
        """
        doc: dict[str, Any] = self._json("DELETE", f"/v1/jobs/{_job_id(job_id)}")
        return doc

    def wait(
        self,
        job_or_id: str | Mapping[str, Any],
        *,
        timeout: float | None = None,
        poll: float = 0.25,
        progress: ProgressArg = None,
    ) -> dict[str, Any]:
        """Poll a job until it ends.

        Args:
            job_or_id: the job's id or its document.
            timeout: the most seconds to wait (None: no limit).
            poll: seconds between polls.
            progress: None shows a progress bar (the job's stage and fraction) on stderr when
                stderr is a terminal; True always, False never; a callable is called with
                every job document polled instead.

        Returns:
            the job's document, in state ``done``.

        Raises:
            JobFailedError: the job failed (the message is its error line);
            JobCancelledError: it was cancelled; TimeoutError: it had not ended after
            ``timeout`` seconds; NotFoundError: no such job.
        """
        job_id = _job_id(job_or_id)
        if isinstance(poll, bool) or not isinstance(poll, int | float) or not poll > 0:
            raise UserInputError(f"poll must be a positive number of seconds, got {poll!r}")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0
        ):
            raise UserInputError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        show = progress if isinstance(progress, bool) else progress is None and _stderr_tty()
        callback = progress if callable(progress) else None
        with _JobBar(job_id, enabled=bool(show)) as bar:
            while True:
                doc = self.job(job_id)
                if callback is not None:
                    callback(doc)
                bar.show(doc)
                state = doc.get("state")
                if state in FINISHED:
                    break
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(
                            f"job {job_id} is still {state} after {float(timeout or 0):g} s"
                        )
                    time.sleep(min(float(poll), left))
                else:
                    time.sleep(float(poll))
        if state == "failed":
            raise JobFailedError(_one_line(doc.get("error") or f"job {job_id} failed"), job=doc)
        if state == "cancelled":
            raise JobCancelledError(f"job {job_id} was cancelled", job=doc)
        return doc

    def result(self, job_id: str | Mapping[str, Any]) -> dict[str, Any]:
        """A finished job's result: ``summary`` (what the CLI's ``--json`` prints as
        ``summary``), ``files`` (``path``, ``url``, ``size`` of each file it wrote),
        ``arrays_url``, ``from_store``, ``resumed`` and the ``job``.

        Raises:
            NotReadyError: the job is still queued or running, or it failed or was cancelled
            (the message says which, with its error line); NotFoundError: no such job.
        """
        doc: dict[str, Any] = self._json("GET", f"/v1/jobs/{_job_id(job_id)}/result")
        return doc

    def download(
        self,
        job_id: str | Mapping[str, Any],
        dest_dir: str | os.PathLike[str],
        *,
        arrays: bool = True,
    ) -> list[Path]:
        """Download every file of a finished job's result into ``dest_dir`` (made when
        missing), keeping their relative paths, and its arrays as ``arrays.h5``.

        Each file is written under a temporary name and renamed into place. Every path is
        checked before anything is downloaded: one that is absolute, has ``..``, or would
        land outside ``dest_dir`` (through a symbolic link) is refused.

        Args:
            arrays: also download the result's arrays (HDF5) as ``dest_dir/arrays.h5``.

        Returns:
            the files written, in the result's order (``arrays.h5`` last).

        Raises:
            ServiceError: a path that would escape ``dest_dir``, or a file that could not be
            fetched; NotReadyError, BadRequestError, NotFoundError: as :meth:`result`.
        """
        jid = _job_id(job_id)
        result = self.result(jid)
        dest = Path(dest_dir)
        root = dest.resolve()
        plan: list[tuple[str, Path]] = []
        for entry in result.get("files") or []:
            relative = entry.get("path") if isinstance(entry, Mapping) else None
            target = _confined(root, relative)
            plan.append((f"/v1/jobs/{jid}/files/{quote(str(relative), safe='/')}", target))
        if arrays and result.get("arrays_url"):
            target = root / "arrays.h5"
            if any(t == target for _, t in plan):
                raise ServiceError(f"job {jid} has a file named arrays.h5: pass arrays=False")
            plan.append((f"/v1/jobs/{jid}/arrays.h5", target))
        written = []
        for url, target in plan:
            self._fetch(url, target, root)
            written.append(dest / target.relative_to(root))
        return written

    def _fetch(self, url: str, target: Path, root: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.parent.resolve().is_relative_to(root):  # a link made meanwhile
            raise ServiceError(f"refusing to write {target}: it is outside {root}")
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out, self._stream(url) as response:
                for chunk in response.iter_bytes(_CHUNK):
                    out.write(chunk)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def run(
        self,
        model: str | Mapping[str, Any],
        method: str,
        params: Mapping[str, Any] | None = None,
        inputs: Mapping[str, Any] | None = None,
        **wait_kw: Any,
    ) -> dict[str, Any]:
        """Submit a job, wait for it and return its result (:meth:`submit`, :meth:`wait`,
        :meth:`result`); ``wait_kw`` go to :meth:`wait` (``timeout``, ``poll``,
        ``progress``).

        Raises:
            what :meth:`submit` and :meth:`wait` raise.
        """
        job = self.submit(model, method, params, inputs)
        self.wait(job, **wait_kw)
        return self.result(job["id"])


# ---- helpers ---------------------------------------------------------------------------------


def _check(response: httpx.Response) -> None:
    """Raise the exception a failed response maps to (nothing for a success)."""
    if response.is_success:
        return
    status = response.status_code
    detail, request_id = "", None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        detail = _one_line(str(body.get("detail") or ""))
        if body.get("request_id"):
            request_id = str(body["request_id"])
    if not detail:
        detail = _one_line(response.text, 300) or response.reason_phrase or "no detail"
    request_id = request_id or response.headers.get("x-request-id")
    message = detail
    if status >= 500 and request_id and request_id not in message:
        message = f"{message} (request id {request_id})"
    cls = _BY_STATUS.get(status, ServiceError)
    if cls is ServiceError and status < 500:
        message = f"HTTP {status}: {message}"
    raise cls(message, status=status, detail=detail, request_id=request_id)


def _segment(value: str) -> str:
    """An id as one URL path segment."""
    if not isinstance(value, str) or not value:
        raise UserInputError(f"expected an id, got {value!r}")
    return quote(value, safe="")


def _job_id(job: str | Mapping[str, Any]) -> str:
    found = job.get("id") if isinstance(job, Mapping) else job
    if not isinstance(found, str):
        raise UserInputError(f"expected a job id or a job document, got {job!r}")
    return _segment(found)


def _confined(root: Path, relative: Any) -> Path:
    """``root/relative`` for a relative POSIX path without ``..`` that stays inside ``root``
    (symbolic links already there resolved); ServiceError otherwise."""
    text = relative if isinstance(relative, str) else ""
    pure = PurePosixPath(text)
    parts = text.split("/")
    if (
        not text
        or "\0" in text
        or "\\" in text
        or pure.is_absolute()
        or (len(parts[0]) >= 2 and parts[0][1] == ":")  # a Windows drive
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise ServiceError(f"refusing the result file path {relative!r}: not a plain relative path")
    target = root.joinpath(*parts)
    if not target.resolve().is_relative_to(root) or target.resolve() == root:
        raise ServiceError(f"refusing the result file path {relative!r}: it leads outside {root}")
    return target


@contextlib.contextmanager
def _open_upload(path: str | os.PathLike[str], what: str) -> Iterator[tuple[str, IO[bytes]]]:
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"the {what} file {p} is not a readable file")
    try:
        fh = open(p, "rb")  # noqa: SIM115  # closed below
    except OSError as exc:
        raise UserInputError(f"cannot read the {what} file {p}: {exc.strerror or exc}") from None
    with fh:
        yield p.name, fh


def _stderr_tty() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _JobBar:
    """A click progress bar of one job on stderr (the stage as its label, the fraction as its
    fill, the server's ETA after it), or nothing when disabled."""

    def __init__(self, job_id: str, *, enabled: bool):
        self.job_id = job_id
        self.enabled = enabled
        self.bar: Any = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> _JobBar:
        if self.enabled:
            import click

            self.bar = self._stack.enter_context(
                click.progressbar(
                    length=_BAR_STEPS, label=f"job {self.job_id}", file=sys.stderr,
                    show_eta=False, show_percent=True, item_show_func=lambda item: item,
                )
            )  # fmt: skip
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def show(self, job: Mapping[str, Any]) -> None:
        if self.bar is None:
            return
        state = str(job.get("state"))
        progress = job.get("progress") or {}
        stage = progress.get("stage")
        fraction = progress.get("fraction")
        eta = progress.get("eta_s")
        if state == "done":
            fraction = 1.0
        label = f"job {self.job_id} {state}" + (f": {stage}" if stage else "")
        pos = round(max(0.0, min(1.0, float(fraction or 0.0))) * _BAR_STEPS)
        info = f"eta {eta:.0f} s" if isinstance(eta, int | float) and state == "running" else None
        if (label, pos, info) == (self.bar.label, self.bar.pos, self.bar.current_item):
            return
        self.bar.label, self.bar.pos, self.bar.current_item = label, pos, info
        self.bar.render_progress()
