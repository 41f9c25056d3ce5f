"""The ``inference.json`` contract: the configuration ``liverseg_predict`` uses when none is asked for.

Model selection (``liverseg_find_best``, :mod:`liverseg.selection`) writes it into
``$LIVERSEG_RESULTS/<Dataset>/inference.json``; :func:`liverseg.inference.models.load_pipeline`
reads it when no pipeline is given::

    {"pipeline": "dual_binary", "folds": [0, 1, 2, 3, 4],
     "postprocessing": ["largest_liver_component_fill_holes", ...], "checkpoint": "best"}

``pipeline`` and ``folds`` are required, ``postprocessing`` (a step list, as
``--postprocessing FILE`` takes) and ``checkpoint`` (``best`` or ``latest``) are optional.
``pipeline`` may be a list of two or more different pipelines, ``["multiclass", "dual_binary"]``:
an ensemble of pipelines, each loaded with the same ``folds`` and ``checkpoint``, whose label
probabilities are averaged before the argmax. Files written before ensembles existed (a single
name) read as they always did.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from liverseg.errors import LiversegError
from liverseg.io.atomic import read_json, write_json
from liverseg.postprocessing import normalise_steps
from liverseg.training.run import parse_fold

INFERENCE_FILE = "inference.json"
CHECKPOINT_CHOICES = ("best", "latest")
KEYS = ("pipeline", "folds", "postprocessing", "checkpoint")

Fold = int | str


def check_checkpoint(checkpoint: Any) -> str:
    """``checkpoint`` if it is one of :data:`CHECKPOINT_CHOICES`, else a LiversegError."""
    if checkpoint not in CHECKPOINT_CHOICES:
        raise LiversegError(f"checkpoint must be one of {', '.join(CHECKPOINT_CHOICES)}; got {checkpoint!r}")
    return checkpoint


def pipeline_names(pipeline: str | Sequence[str] | None, source: str) -> list[str] | None:
    """The pipeline names a ``pipeline`` argument or inference.json value gives (None for none), checked."""
    if pipeline is None:
        return None
    names = [pipeline] if isinstance(pipeline, str) else list(pipeline)
    if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise LiversegError(f"{source}: a pipeline is a name, an ensemble a list of two or more different names; "
                            f"got {pipeline!r}")
    return names


def write_inference_config(dataset_dir: str | Path, pipeline: str | Sequence[str], folds: Sequence[Fold],
                           postprocessing: Sequence[str | dict[str, Any]] | None = None,
                           checkpoint: str | None = None) -> Path:
    """Write ``<dataset_dir>/inference.json``: the configuration prediction uses when none is asked for.

    ``pipeline`` is one pipeline's name or a list of names (an ensemble of pipelines).
    """
    names = pipeline_names(pipeline, "inference.json pipeline")
    content: dict[str, Any] = {"pipeline": names[0] if len(names) == 1 else names,
                               "folds": [parse_fold(f) for f in folds]}
    if postprocessing is not None:
        content["postprocessing"] = normalise_steps(list(postprocessing), "inference.json postprocessing")
    if checkpoint is not None:
        content["checkpoint"] = check_checkpoint(checkpoint)
    path = Path(dataset_dir) / INFERENCE_FILE
    write_json(path, content)
    return path


def read_inference_config(path: str | Path) -> dict[str, Any]:
    """Read and check an inference.json (see the module docstring); a LiversegError names the file."""
    path = Path(path)
    try:
        content = read_json(path)
    except (OSError, ValueError) as e:
        raise LiversegError(f"{path}: cannot be read as JSON ({e}); fix or delete it") from None
    if not isinstance(content, dict) or not isinstance(content.get("pipeline"), (str, list)) or \
            not isinstance(content.get("folds"), list) or not content["folds"]:
        raise LiversegError(f"{path}: expected {{\"pipeline\": NAME or [NAME, NAME, ...], \"folds\": [0, 1, ...]}} with "
                            "optional \"postprocessing\" and \"checkpoint\"; fix or delete it")
    unknown = sorted(set(content) - set(KEYS))
    if unknown:
        raise LiversegError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(KEYS)}")
    try:
        names = pipeline_names(content["pipeline"], "pipeline")
        config = {"pipeline": names[0] if len(names) == 1 else names,
                  "folds": [parse_fold(f) for f in content["folds"]]}
        if "postprocessing" in content:
            config["postprocessing"] = normalise_steps(content["postprocessing"], f"{path} postprocessing")
        if "checkpoint" in content:
            config["checkpoint"] = check_checkpoint(content["checkpoint"])
    except LiversegError as e:
        raise LiversegError(f"{path}: {e}") from None
    return config
