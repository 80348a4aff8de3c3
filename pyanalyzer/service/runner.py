"""One job, run: the analysis built from ``{method, params}`` on the job's model, its inputs
built from the job's ``inputs``, the result from the store or computed, and the report files
written by :func:`pyanalyzer.report.write_result` into the job's folder: the same analysis,
store key and files as the CLI command with the same parameters.

Inputs by what the analysis takes (:attr:`~pyanalyzer.analysis.Analysis.inputs`):

================  =========================================================================
``concepts``      ``dataset``: ``"synthetic"`` (default: the synthetic concept scenes, with
                  ``n_images``, default 1000, and ``seed``, default 0) or the name of a
                  Broden-format folder under the server's ``--datasets``
``images``        ``images``: uploaded image ids (required)
``image-source``  ``images`` (uploaded ids), else synthetic scenes (``n_images``: the
                  method's default count when absent)
``reference``     ``images``: optional reference images
``none``          nothing
================  =========================================================================

A param that names another model (an analysis' ``model_params``: compare's ``other``) holds
the id of another model uploaded by the same owner; it is loaded here and handed to the
analysis as the keyword of the same name (an unknown id is bad input).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pyanalyzer.analysis import NotStored
from pyanalyzer.errors import UserInputError

if TYPE_CHECKING:
    from pyanalyzer.analysis import Analysis
    from pyanalyzer.model.model import Model
    from pyanalyzer.service.config import ServiceConfig
    from pyanalyzer.store import Store

__all__ = ["JobInputs", "LoadedModels", "NotStored", "PreparedJob", "prepare_job", "run_prepared"]

DEFAULT_CONCEPT_IMAGES = 1000
"""Scenes of the default synthetic concept dataset (the CLI's ``dissect --n-images``)."""


class JobInputs(BaseModel):
    """What a job runs on (see the module)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str | None = Field(
        None, description="Concept dataset: 'synthetic' or a folder name under --datasets."
    )
    n_images: Annotated[int, Field(ge=1, le=1_000_000)] | None = Field(
        None, description="Synthetic scenes (concept dataset or images scanned)."
    )
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = Field(
        0, description="Seed of the synthetic concept dataset."
    )
    images: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        None, max_length=10_000, description="Uploaded image ids."
    )


class LoadedModels:
    """The last few uploaded models loaded (server and workers keep some; loading checks the
    file again each time). Thread-safe."""

    def __init__(self, models_dir: Path, keep: int):
        import threading
        from collections import OrderedDict

        self.models_dir = models_dir
        self.keep = keep
        self._loaded: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model_id: str, preprocessing: Mapping[str, Any] | None) -> Model:
        """The model ``model_id`` (``<models_dir>/<id>.onnx``) with its preprocessing."""
        import json

        from pyanalyzer.model import load_model

        key = (model_id, json.dumps(preprocessing, sort_keys=True))
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            path = self.models_dir / f"{model_id}.onnx"
            model = load_model(path, preprocessing, check_parity=False, external_data=False)
            self._loaded[key] = model
            while len(self._loaded) > self.keep:
                self._loaded.popitem(last=False)
            return model


@dataclasses.dataclass
class PreparedJob:
    """A job's analysis and inputs, checked, ready to run."""

    analysis: Analysis
    inputs: Any
    dataset: Any = None
    write_context: dict[str, Any] = dataclasses.field(default_factory=dict)
    make_dataset: Callable[[], Any] | None = None
    """Makes the synthetic concept dataset when it does not exist yet."""


def parse_inputs(data: Mapping[str, Any] | None) -> JobInputs:
    from pyanalyzer.analysis import _message

    try:
        return JobInputs.model_validate(dict(data or {}))
    except ValidationError as exc:
        raise UserInputError(_message(exc, "inputs")) from None


def prepare_job(
    model: Model,
    method: str,
    params: Mapping[str, Any],
    inputs: Mapping[str, Any] | None,
    *,
    config: ServiceConfig,
    store: Store,
    image_path: Callable[[str], Path],
    model_of: Callable[[str], Model] | None = None,
    progress: bool = False,
) -> PreparedJob:
    """Build the analysis (its params checked against the model) and its inputs.

    Args:
        image_path: an uploaded image id → its file (raises UserInputError for an unknown id).
        model_of: an uploaded model id → the loaded model (raises UserInputError for an
            unknown id): for the params that name another model (an analysis'
            ``model_params``, e.g. compare's ``other``), handed to the analysis as the keyword
            of the same name.

    Raises:
        UserInputError: unknown method, bad params, an unknown model id, inputs the method
            does not take.
    """
    from pyanalyzer.methods import analysis as analysis_class

    cls = analysis_class(method)
    given = parse_inputs(inputs)
    models: dict[str, Any] = _other_models(cls, params, model_of)
    analysis = cls(model, dict(params), store=store, progress=progress, **models)
    kind = cls.inputs
    allowed = {
        "concepts": {"dataset", "n_images", "seed"},
        "images": {"images"},
        "image-source": {"images", "n_images"},
        "reference": {"images"},
        "none": set(),
    }[kind]
    extra = sorted(set(given.model_fields_set) - allowed)
    if extra:
        raise UserInputError(
            f"{method} does not take the input(s) {', '.join(extra)}"
            + (f"; it takes {', '.join(sorted(allowed))}" if allowed else "; it takes none")
        )
    if kind == "concepts":
        return _concepts(analysis, given, config, progress)
    from pyanalyzer.data.images import ImageFiles

    files = None if given.images is None else ImageFiles([image_path(i) for i in given.images])
    if files is not None and len(files) == 0:
        raise UserInputError("inputs.images is empty: give at least one image id")
    if kind == "images":
        if files is None:
            raise UserInputError(f"{method} needs inputs.images (uploaded image ids)")
        prepared = analysis.prepare(files)
        return PreparedJob(analysis, prepared, write_context={"source": files})
    if kind == "image-source":
        source: Any = files
        if source is None and given.n_images is not None:
            from pyanalyzer.data.defaults import SyntheticImages

            source = SyntheticImages.for_model(model.preprocessing, given.n_images)
        prepared = analysis.prepare(source)
        return PreparedJob(analysis, prepared, write_context={"source": prepared})
    prepared = analysis.prepare(files)
    return PreparedJob(analysis, prepared)


def _other_models(
    cls: type[Analysis], params: Mapping[str, Any], model_of: Callable[[str], Model] | None
) -> dict[str, Model]:
    """The models named by ids in ``params`` (the analysis' ``model_params``), loaded; a value
    that is not a string is left to the params' validation."""
    found: dict[str, Model] = {}
    for name in getattr(cls, "model_params", ()):
        model_id = params.get(name)
        if isinstance(model_id, str) and model_id:
            if model_of is None:
                raise UserInputError(f"params.{name}: no uploaded models here")
            found[name] = model_of(model_id)
    return found


def _concepts(
    analysis: Analysis, given: JobInputs, config: ServiceConfig, progress: bool
) -> PreparedJob:
    from pyanalyzer.data.broden import BrodenDataset

    name = given.dataset or "synthetic"
    concepts = config.concepts_dir
    if name == "synthetic":
        from pyanalyzer.data.defaults import concept_dataset, scene_size
        from pyanalyzer.data.synthetic import check_count

        n = check_count(given.n_images or DEFAULT_CONCEPT_IMAGES)
        size = scene_size(analysis.model.preprocessing)
        folder = concepts / f"synth-n{n}-s{size}-seed{given.seed}"
        if (folder / "index.csv").is_file():
            ds = BrodenDataset(folder)
            analysis.prepare(ds)
            return PreparedJob(analysis, ds, dataset=ds)

        def make() -> Any:
            return concept_dataset(concepts, n, size, given.seed, progress=progress)

        return PreparedJob(analysis, None, make_dataset=make)
    if given.n_images is not None or given.seed != 0:
        raise UserInputError("inputs.n_images and inputs.seed apply to the synthetic dataset only")
    ds = BrodenDataset(dataset_folder(config, name), cache_dir=concepts)
    analysis.prepare(ds)
    return PreparedJob(analysis, ds, dataset=ds)


def dataset_folder(config: ServiceConfig, name: str) -> Path:
    """The Broden folder ``name`` under ``--datasets`` (a plain name, no path).

    Raises:
        UserInputError: no such dataset.
    """
    known = list_datasets(config)
    if name not in known:
        choices = ", ".join(["synthetic", *known])
        raise UserInputError(f"unknown dataset {name!r}; choose one of {choices}")
    assert config.datasets is not None
    return config.datasets / name


def list_datasets(config: ServiceConfig) -> list[str]:
    """The Broden-format folders under ``--datasets`` (those with an ``index.csv``)."""
    if config.datasets is None or not config.datasets.is_dir():
        return []
    return sorted(
        p.name
        for p in config.datasets.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / "index.csv").is_file()
    )


def run_prepared(job: PreparedJob, out_dir: Path, *, stored_only: bool = False) -> dict[str, Any]:
    """Run a prepared job and write its files into ``out_dir`` (replacing what was there).

    Args:
        stored_only: answer from the store or raise :class:`NotStored` (nothing computed).

    Returns:
        the job's result document: method, from_store, resumed, files (relative to
        ``out_dir``) and the result's summary (what the CLI's ``--json`` prints).
    """
    from pyanalyzer._io import write_json
    from pyanalyzer.report import has_writer, write_result

    analysis = job.analysis
    if job.inputs is None and job.make_dataset is not None:
        if stored_only:
            raise NotStored()
        job.dataset = job.inputs = job.make_dataset()
        analysis.prepare(job.inputs)
    analysis.stored_only = stored_only  # a miss raises NotStored: nothing is computed
    result = analysis.run(job.inputs)
    context = dict(job.write_context)
    if job.dataset is not None:
        model = analysis.model
        context.update(
            model=model,
            dataset=job.dataset,
            extra={
                "model_file": str(model.path), "model_sha256": model.sha256,
                "dataset": str(job.dataset.root), "dataset_digest": job.dataset.digest,
                "preprocessing": model.preprocessing.to_dict(),
                "parameters": analysis.resolved(), "from_store": analysis.from_store,
                "timings": getattr(result, "timings", None),
            },
        )  # fmt: skip
    if out_dir.exists():
        shutil.rmtree(out_dir)
    if has_writer(result):
        write_result(result, out_dir, **context)
    else:  # e.g. a trained decoder: it lives in the store; its summary is the file
        out_dir.mkdir(parents=True)
        write_json(out_dir / "summary.json", result.summary())
    files = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file())
    return {
        "method": analysis.method,
        "from_store": analysis.from_store,
        "resumed": analysis.resumed,
        "files": files,
        "summary": result.summary(),
    }
