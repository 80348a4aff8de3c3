"""The bodies of the service's requests and answers (its OpenAPI schema), the error answers
every route documents, and the media types of a job's files."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pyanalyzer.service.runner import JobInputs

# ---- response and request bodies (the OpenAPI schema) ----------------------------------------


class ErrorBody(BaseModel):
    detail: str = Field(description="What went wrong, in one line.")
    request_id: str | None = Field(None, description="Present on 500: find it in the log.")


class QueueDepth(BaseModel):
    queued: int
    running: int


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    core: bool = Field(description="The compiled C++ core is loaded.")
    cuda: bool = Field(description="The CUDA kernels are loaded.")
    cuda_devices: int
    onnxruntime_providers: list[str]
    queue: QueueDepth
    workers: int = Field(description="Worker processes alive.")
    auth: bool = Field(description="Whether requests need a bearer token.")


class ModelDoc(BaseModel):
    id: str
    name: str
    size: int
    sha256: str
    preprocessing: dict[str, Any] | None
    created: float
    info: dict[str, Any] = Field(description="What `pyanalyzer info --json` prints.")


class ModelList(BaseModel):
    models: list[ModelDoc]


class ImageDoc(BaseModel):
    id: str
    name: str
    size: int
    created: float


class ImageList(BaseModel):
    images: list[ImageDoc]


class DatasetDoc(BaseModel):
    name: str
    kind: Literal["synthetic", "broden"]
    images: int | None
    description: str


class DatasetList(BaseModel):
    datasets: list[DatasetDoc]


class MethodDoc(BaseModel):
    method: str
    summary: str
    revision: int
    inputs: str
    params: dict[str, Any] = Field(description="The params' JSON Schema.")


class MethodList(BaseModel):
    methods: list[MethodDoc]


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(max_length=64, description="An uploaded model's id.")
    method: str = Field(max_length=64, description="One of GET /v1/methods.")
    params: dict[str, Any] = Field(default_factory=dict, description="The method's params.")
    inputs: JobInputs = Field(default_factory=JobInputs)


class Progress(BaseModel):
    stage: str | None
    fraction: float | None
    eta_s: float | None


class JobDoc(BaseModel):
    id: str
    model: str
    method: str
    params: dict[str, Any]
    inputs: dict[str, Any]
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    progress: Progress
    error: str | None
    created: float
    started: float | None
    finished: float | None
    links: dict[str, str]


class JobList(BaseModel):
    jobs: list[JobDoc]


class FileDoc(BaseModel):
    path: str
    url: str
    size: int


class ResultDoc(BaseModel):
    job: JobDoc
    method: str
    from_store: bool
    resumed: bool
    summary: Any
    files: list[FileDoc]
    arrays_url: str | None


FILE_TYPES = {
    ".png": "image/png",
    ".csv": "text/csv",
    ".json": "application/json",
    ".html": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    "": "application/octet-stream",
}
"""The media type of a job's file by its suffix (any other suffix: octet-stream); the
OpenAPI document lists them all."""

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "Malformed request: a body that cannot be parsed (broken multipart, not UTF-8)."),
        (401, "Missing or unknown bearer token."),
        (404, "No such resource (or it belongs to another token)."),
        (413, "The upload is larger than the server's limit."),
        (422, "Bad input: one line naming the problem."),
        (429, "Too many queued jobs for this token."),
        (500, "Internal error; its request id is in the log."),
        (503, "The server cannot do it now (e.g. its store is unreadable); one line says why."),
    )
}
