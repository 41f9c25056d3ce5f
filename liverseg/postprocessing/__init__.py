"""Post-processing steps on label maps, looked up by the name a plan or a JSON file gives them.

A step is a function ``step(label, spacing, **params) -> label`` on a ``(z, y, x)`` uint8 label
map (0 background, 1 liver, 2 tumour) with its ``(z, y, x)`` spacing in mm; it returns a new map
and never changes its input. A step that also declares a ``probabilities`` parameter receives the
prediction's class probabilities (room for an object-level false-positive filter).

Built-in steps (docs/postprocessing.md describes each and its paper):
``largest_liver_component_fill_holes``, ``remove_tumour_outside_liver``, ``close_tumour``,
``open_liver_border_band``, ``remove_small_lesions``.

A list of steps names each step by its name, or as ``{"name": ..., "params": {...}}`` to set its
parameters. Add a step without editing liverseg by decorating it in a module you import::

    from liverseg.postprocessing import POSTPROCESSING

    @POSTPROCESSING.register("my_step")
    def my_step(label, spacing, threshold=0.5): ...

or from an installed package through the ``liverseg.postprocessing`` entry-point group.
"""
from __future__ import annotations

import inspect
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from liverseg.errors import LiversegError
from liverseg.evaluation.metrics import check_label
from liverseg.postprocessing.liver import largest_liver_component_fill_holes
from liverseg.postprocessing.tumour import (
    close_tumour,
    open_liver_border_band,
    remove_small_lesions,
    remove_tumour_outside_liver,
)
from liverseg.registry import Registry

log = logging.getLogger(__name__)

Step = Callable[..., np.ndarray]
ENTRY_POINT_GROUP = "liverseg.postprocessing"
POSTPROCESSING: Registry[Step] = Registry("post-processing step", entry_point_group=ENTRY_POINT_GROUP)
for _step in (largest_liver_component_fill_holes, remove_tumour_outside_liver, close_tumour,
              open_liver_border_band, remove_small_lesions):
    POSTPROCESSING.register(_step.__name__)(_step)

# The ATLAS paper's three steps in their order (Lambert et al. 2023, section 2.5).
DEFAULT_STEPS = ("largest_liver_component_fill_holes", "remove_tumour_outside_liver", "close_tumour")

__all__ = ["DEFAULT_STEPS", "ENTRY_POINT_GROUP", "POSTPROCESSING", "apply_steps", "available_steps",
           "get_step", "load_postprocessing", "normalise_steps"]


def available_steps() -> list[str]:
    """Names a step list may use: registered steps plus those installed packages declare."""
    return POSTPROCESSING.available()


def get_step(name: str) -> Step:
    """The step function called ``name``; loads an entry-point plugin the first time it is asked for."""
    return POSTPROCESSING.get(name)


def _parameters(step: Step) -> list[str]:
    """The parameters a step list may set: all but the label, spacing and probabilities."""
    fixed = ("label", "spacing", "probabilities")
    return [name for name, p in inspect.signature(step).parameters.items()
            if name not in fixed and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]


def normalise_steps(steps: Sequence[str | dict[str, Any]], source: str = "post-processing") -> list[dict[str, Any]]:
    """Steps as ``[{"name": ..., "params": {...}}, ...]`` after checking names and parameter names.

    ``source`` names where the list came from (a file, the plan) in error messages.
    """
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Sequence):
        raise LiversegError(f"{source}: expected a list of steps; got {type(steps).__name__}")
    result = []
    for i, spec in enumerate(steps, 1):
        if isinstance(spec, str):
            name, params = spec, {}
        elif isinstance(spec, dict) and isinstance(spec.get("name"), str) and set(spec) <= {"name", "params"}:
            name, params = spec["name"], spec.get("params", {})
            if not isinstance(params, dict):
                raise LiversegError(f"{source}: step {i} ({name}): params must be an object; got {params!r}")
        else:
            raise LiversegError(f"{source}: step {i} must be a step name or {{\"name\": ..., \"params\": {{...}}}}; "
                                f"got {spec!r}")
        try:
            step = get_step(name)
        except LiversegError as error:
            raise LiversegError(f"{source}: step {i}: {error}") from None
        signature = inspect.signature(step)
        unknown = sorted(set(params) - set(_parameters(step)))
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
        if unknown and not takes_any:
            raise LiversegError(f"{source}: step {i} ({name}) has no parameter {', '.join(unknown)}; "
                                f"its parameters: {', '.join(_parameters(step)) or '(none)'}")
        extra = {"probabilities": None} if "probabilities" in signature.parameters else {}
        try:
            signature.bind(None, None, **params, **extra)
        except TypeError as error:
            raise LiversegError(f"{source}: step {i} ({name}): {error}; give it in \"params\"") from None
        result.append({"name": name, "params": dict(params)})
    return result


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise LiversegError(f"spacing must be three positive numbers (z, y, x) in mm; got {tuple(spacing)}")
    return values  # type: ignore[return-value]


def _run(spec: dict[str, Any], label: np.ndarray, spacing: Sequence[float],
         probabilities: np.ndarray | None) -> np.ndarray:
    step = get_step(spec["name"])
    kwargs = dict(spec["params"])
    if "probabilities" in inspect.signature(step).parameters:
        kwargs["probabilities"] = probabilities
    return step(label, spacing, **kwargs)


def apply_steps(
    label: np.ndarray, spacing: Sequence[float], steps: Sequence[str | dict[str, Any]],
    probabilities: np.ndarray | None = None,
) -> np.ndarray:
    """Run post-processing ``steps`` in order on a ``(z, y, x)`` label map; returns a new uint8 map.

    ``steps`` is a list of names or ``{"name": ..., "params": {...}}``; ``spacing`` is ``(z, y, x)``
    mm. ``probabilities`` (class probabilities ``(C, z, y, x)``) goes to the steps that declare a
    ``probabilities`` parameter. The input label map is not modified.
    """
    label = check_label(label, "label map to post-process")
    spacing = _check_spacing(spacing)
    if probabilities is not None and tuple(np.shape(probabilities)[-3:]) != label.shape:
        raise LiversegError(f"probabilities of shape {np.shape(probabilities)} do not match "
                            f"the label map {label.shape}")
    out = label.copy()
    for spec in normalise_steps(steps):
        start = time.perf_counter()
        try:
            out = _run(spec, out, spacing, probabilities)
        except LiversegError as error:
            raise LiversegError(f"post-processing step {spec['name']}: {error}") from None
        log.debug("post-processing %s took %.2f s", spec["name"], time.perf_counter() - start)
    return np.asarray(out, dtype=np.uint8)


def load_postprocessing(
    spec: str | Path, plan_steps: Sequence[str | dict[str, Any]] = DEFAULT_STEPS
) -> list[dict[str, Any]]:
    """The steps a ``--postprocessing none|plan|<file.json>`` option asks for, checked.

    ``none`` gives no steps, ``plan`` the plan's ``plan_steps``; anything else is a JSON file
    holding a list of steps or ``{"steps": [...]}``. Every step is tried once on a one-voxel label
    map, so a bad parameter value fails now and not after hours of inference.
    """
    if str(spec) == "none":
        return []
    if str(spec) == "plan":
        steps, source = plan_steps, "the plan's post-processing"
    else:
        path = Path(spec)
        source = str(path)
        if not path.is_file():
            raise LiversegError(f"{path}: post-processing file not found; give 'none', 'plan' or a JSON file "
                                f"listing steps (available: {', '.join(available_steps())})")
        try:
            steps = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise LiversegError(f"{path}: not valid JSON ({error}); expected a list of steps") from None
        if isinstance(steps, dict) and set(steps) == {"steps"}:
            steps = steps["steps"]
    normalised = normalise_steps(steps, source)
    empty = np.zeros((1, 1, 1), dtype=np.uint8)
    for i, step in enumerate(normalised, 1):
        try:
            _run(step, empty, (1.0, 1.0, 1.0), None)
        except LiversegError as error:
            raise LiversegError(f"{source}: step {i} ({step['name']}): {error}") from None
    return normalised
