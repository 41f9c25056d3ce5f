"""Predict one image with a trained pipeline: the Python API behind ``liverseg_predict``.

::

    from liverseg.inference.predictor import Predictor

    predictor = Predictor.from_folder("ATLAS")               # or a results folder; see models.py
    prediction = predictor.predict(sitk.ReadImage("scan.nii.gz"))
    sitk.WriteImage(prediction.to_sitk(), "scan_seg.nii.gz")  # same grid and header as the scan
    prediction.lesion_report["lesions"][0]["volume_ml"]

``predict`` takes a SimpleITK image (or one per channel), a file or DICOM folder path (or one per
channel), or a numpy array ``(z, y, x)`` or ``(channels, z, y, x)`` with its ``spacing`` in
``(z, y, x)`` order, mm. A numpy array is taken to be in the canonical orientation (LPS: index
axes x, y, z pointing to the patient's left, posterior, superior; identity direction, origin 0)
unless a :class:`~liverseg.io.images.Geometry` is given. Arrays come back in the same canonical
``(z, y, x)`` layout; :meth:`Prediction.to_sitk` restores the input's own orientation and header.

Per case: each model's preprocessing (crop, normalise, resample: the training's own code), the
sliding window of every fold (Gaussian-weighted, mirrored along the axes the model was mirrored
along in training: in-plane only where its grid has thick slices, all three axes otherwise, not
at all for a model trained without mirroring), the fold average of the softmax
probabilities, the pipeline's combine rule (:mod:`liverseg.inference.combine`: probabilities
mapped back onto the original grid before any argmax), post-processing, and the lesion report
(:mod:`liverseg.postprocessing.report`). An ensemble of pipelines
(:class:`~liverseg.inference.models.LoadedEnsemble`) runs each member pipeline as above up to its
combine rule and averages their label probabilities and tumour probabilities
(:func:`average_combined`) before post-processing. The three stages are separate methods (:meth:`Predictor.prepare`,
:meth:`Predictor.infer`, :meth:`Predictor.finish`) so a run can overlap them over cases.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from liverseg.errors import LiversegError
from liverseg.inference.combine import Combined, get_combine_rule
from liverseg.inference.device import autocast_dtype, resolve_device
from liverseg.inference.models import Fold, Loaded, LoadedModel, load_pipeline
from liverseg.inference.sliding_window import mirror_combinations, predict_sliding_window
from liverseg.inference.windows import check_step_fraction
from liverseg.io.images import CANONICAL_ORIENTATION, Geometry, array_to_sitk, geometry_mismatch, read_channels, sitk_to_array
from liverseg.postprocessing import apply_steps, load_postprocessing, normalise_steps
from liverseg.postprocessing.report import lesion_instance_map, lesion_report
from liverseg.preprocessing.case import PreprocessedCase, preprocess_arrays
from liverseg.preprocessing.crop import BBox
from liverseg.preprocessing.inverse import probabilities_to_original
from liverseg.training.data import model_mirror_axes

log = logging.getLogger(__name__)

ImageInput = sitk.Image | np.ndarray | str | Path | Sequence[sitk.Image] | Sequence[str | Path]
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass
class PreparedCase:
    """A case read and preprocessed for every grid the pipeline's models use.

    ``grids`` is keyed by preprocessing spec name (members of an ensemble share a grid when
    their plans define it alike; otherwise the key is ``<pipeline>/<spec name>``).
    """

    case_id: str
    geometry: Geometry
    grids: dict[str, PreprocessedCase]
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class Prediction:
    """One predicted case on its canonical original grid.

    ``label`` uint8 ``(z, y, x)`` (0 background, 1 liver, 2 tumour) after post-processing;
    ``probabilities`` float16 ``(labels, z, y, x)`` before post-processing (None unless asked
    for); ``tumour_probability`` float16 ``(z, y, x)``, what the lesion report averages per lesion;
    ``lesion_report`` as :func:`liverseg.postprocessing.report.lesion_report` returns it;
    ``seconds`` per stage.
    """

    case_id: str
    label: np.ndarray
    geometry: Geometry
    probabilities: np.ndarray | None
    tumour_probability: np.ndarray
    lesion_report: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)

    def to_sitk(self) -> sitk.Image:
        """The label map as a SimpleITK image with the input's size, spacing, origin, direction."""
        return array_to_sitk(self.label, self.geometry)

    def lesion_map(self) -> np.ndarray:
        """Instance map ``(z, y, x)`` uint16: lesion ``k`` of the report has value ``k``."""
        return lesion_instance_map(self.label, self.lesion_report["connectivity"])


class _Case:
    """The :class:`~liverseg.inference.combine.CaseModels` a combine rule sees for one prepared case and pipeline."""

    def __init__(self, predictor: "Predictor", member: int, prepared: PreparedCase) -> None:
        self.predictor, self.member, self.prepared = predictor, member, prepared
        self.num_labels = predictor.num_labels
        self.seconds = {"network": 0.0, "map_back": 0.0}

    def _model(self, name: str) -> LoadedModel:
        return self.predictor.models.members[self.member].model(name)

    def _grid_key(self, model: str) -> str:
        return self.predictor.grid_keys[self.member][model]

    def grid(self, model: str) -> dict:
        return self.prepared.grids[self._grid_key(model)].properties

    def probabilities(self, model: str, box: BBox | None = None) -> np.ndarray:
        start = time.perf_counter()
        loaded = self._model(model)
        data = self.prepared.grids[self._grid_key(model)].data
        if box is not None:
            data = data[(slice(None), *box)]
        total = self.predictor.fold_average(loaded, data, self.predictor.member_mirror_axes[self.member][model])
        self.seconds["network"] += time.perf_counter() - start
        return total

    def to_original(self, model: str, probabilities: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        mapped = probabilities_to_original(probabilities, self.grid(model))
        self.seconds["map_back"] += time.perf_counter() - start
        return mapped


def average_combined(parts: Iterable[Combined]) -> Combined:
    """The ensemble of several pipelines' outputs: mean label probabilities, their argmax, mean tumour probability.

    ``parts`` is consumed one at a time (a generator keeps one member's full-volume maps in memory
    besides the running sums). Ties in the argmax go to the lower label, as ``numpy.argmax`` does.
    """
    probabilities = tumour = None
    count = 0
    for part in parts:
        if probabilities is None:
            probabilities = part.probabilities.astype(np.float32, copy=True)
            tumour = part.tumour_probability.astype(np.float32, copy=True)
        else:
            if part.probabilities.shape != probabilities.shape:
                raise ValueError(f"ensemble members disagree in shape: {part.probabilities.shape} vs {probabilities.shape}")
            probabilities += part.probabilities
            tumour += part.tumour_probability
        count += 1
        del part  # not held while the next member runs
    if probabilities is None:
        raise ValueError("an ensemble needs at least one member's output")
    probabilities /= count
    tumour /= count
    return Combined(probabilities.argmax(0).astype(np.uint8), probabilities, tumour)


class Predictor:
    """A loaded pipeline (or ensemble of pipelines) with its inference settings; :meth:`predict` segments one image.

    - ``device``: ``auto`` (a GPU when torch sees one), ``cpu``, ``cuda`` or ``cuda:N``;
      ``accumulate_device``: where full-volume probabilities are summed (default: ``device``;
      ``cpu`` when a large volume does not fit beside the network on a GPU);
    - ``tta``: test-time mirroring; ``mirror_axes``: ``"auto"`` = the axes the model was mirrored
      along in training (its plan's ``mirroring``: y and x, 4 passes, on thick slices; all
      three, 8 passes, otherwise; none for dual_binary's liver model, which then runs once); or
      explicit axes (0 = z); :attr:`mirror_axes` maps each model (``<pipeline>/<model>`` in an
      ensemble) to its axes (None: no mirroring);
    - ``step``: window spacing as a fraction of the patch (0.5 = half a patch overlap);
      ``batch_windows``: windows per forward pass;
    - ``use_bf16``: ``"auto"`` = bf16 autocast on CPUs with native bf16 (fp16 on GPUs), ``False``
      = fp32, ``True`` = bf16 anywhere;
    - ``postprocessing``: ``"auto"`` (the configuration's steps: inference.json's or the plan's),
      ``"plan"`` (for an ensemble the members' plan steps combined:
      :func:`~liverseg.inference.models.ensemble_steps`), ``"none"``, a JSON file, or a list of steps.
    """

    def __init__(self, models: Loaded, device: str | torch.device = "auto", tta: bool = True,
                 mirror_axes: str | Sequence[int] = "auto", step: float = 0.5, batch_windows: int = 2,
                 use_bf16: bool | str = "auto", postprocessing: str | Path | Sequence[Any] = "auto",
                 accumulate_device: str | torch.device | None = None, progress: bool = False) -> None:
        self.models = models
        self.combine_rules = [get_combine_rule(m.pipeline.combine) for m in models.members]
        self.grid_keys = self._grid_keys(models)
        self.device = resolve_device(device)
        self.accumulate_device = self.device if accumulate_device is None else resolve_device(accumulate_device)
        self.precision = autocast_dtype(self.device, use_bf16)
        self.use_bf16 = use_bf16
        self.step = check_step_fraction(step)
        if isinstance(batch_windows, bool) or int(batch_windows) != batch_windows or batch_windows < 1:
            raise LiversegError(f"batch_windows must be a positive whole number; got {batch_windows!r}")
        self.batch_windows = int(batch_windows)
        self.member_mirror_axes = [{m.name: self._mirror_axes(m, tta, mirror_axes) for m in member.models}
                                   for member in models.members]
        if len(models.members) == 1:
            self.mirror_axes = self.member_mirror_axes[0]
        else:
            self.mirror_axes = {f"{member.name}/{name}": axes for member, by_model in
                                zip(models.members, self.member_mirror_axes) for name, axes in by_model.items()}
        self.postprocessing = self._steps(postprocessing)
        self.progress = progress
        self.num_labels = max(max(models.plan.labels.values()), 2) + 1

    @classmethod
    def from_folder(cls, source: str | Path | None = None, pipeline: str | Sequence[str] | None = None,
                    folds: Sequence[Fold] | None = None, checkpoint: str | None = None, **options: Any) -> "Predictor":
        """Load trained models (:func:`liverseg.inference.models.load_pipeline`) and wrap them with ``options``.

        ``source``: a dataset name or id under ``$LIVERSEG_RESULTS``, a results folder, or None
        for the only trained dataset; ``pipeline``: a name, a list of names (an ensemble of
        pipelines) or None (inference.json's choice); ``options`` are those of :class:`Predictor`.
        """
        return cls(load_pipeline(source, pipeline, folds, checkpoint), **options)

    @staticmethod
    def _grid_keys(models: Loaded) -> list[dict[str, str]]:
        """Per member, the key of each model's grid in :attr:`PreparedCase.grids` (one grid per distinct spec)."""
        specs: dict[str, Any] = {}
        keys = []
        for member in models.members:
            by_model = {}
            for model in member.models:
                key = model.plan.preprocessing
                if specs.get(key, model.spec) != model.spec:  # another member's plan defines this grid differently
                    key = f"{member.name}/{key}"
                specs[key] = model.spec
                by_model[model.name] = key
            keys.append(by_model)
        return keys

    def _mirror_axes(self, model: LoadedModel, tta: bool, mirror_axes: str | Sequence[int]) -> tuple[int, ...] | None:
        if not tta:
            return None
        if isinstance(mirror_axes, str):
            if mirror_axes != "auto":
                raise LiversegError(f"mirror_axes must be 'auto' or a list of axes (0 = z, 1 = y, 2 = x); "
                                    f"got {mirror_axes!r}")
            return model_mirror_axes(model.plan, model.spec.target_spacing) or None
        mirror_combinations(mirror_axes)  # validates
        return tuple(int(a) for a in mirror_axes)

    def _steps(self, postprocessing: str | Path | Sequence[Any]) -> list[dict[str, Any]]:
        if isinstance(postprocessing, (str, Path)):
            if str(postprocessing) == "auto":
                return list(self.models.postprocessing)
            return load_postprocessing(postprocessing, self.models.plan_steps)
        return normalise_steps(list(postprocessing), "postprocessing")

    def describe(self) -> dict[str, Any]:
        """JSON-ready record of the models and settings (what a prediction run writes beside its outputs)."""
        return {
            **self.models.describe(),
            "device": str(self.device), "accumulate_device": str(self.accumulate_device),
            "precision": str(self.precision or torch.float32).removeprefix("torch."),
            "mirror_axes": {k: None if v is None else list(v) for k, v in self.mirror_axes.items()},
            "step": self.step, "batch_windows": self.batch_windows, "postprocessing": self.postprocessing,
        }

    def fold_average(self, model: LoadedModel, data: np.ndarray, mirror_axes: tuple[int, ...] | None) -> np.ndarray:
        """Mean softmax ``(classes, z, y, x)`` float32 of every fold's network over a preprocessed image."""
        total = None
        for network in model.networks:
            probabilities = predict_sliding_window(
                network, data, model.plan.topology.patch_size, model.plan.num_classes, step_fraction=self.step,
                mirror_axes=mirror_axes, batch_windows=self.batch_windows, compute_device=self.device,
                accumulate_device=self.accumulate_device, use_bf16=self.use_bf16, progress=self.progress)
            total = probabilities if total is None else total.add_(probabilities)
        if len(model.networks) > 1:
            total.div_(len(model.networks))
        return total.cpu().numpy()

    def prepare(self, image: ImageInput, spacing: Sequence[float] | None = None, geometry: Geometry | None = None,
                case_id: str = "case") -> PreparedCase:
        """Read (if given paths), check and preprocess one image for every grid the models use."""
        start = time.perf_counter()
        array, geometry = self._canonical(image, spacing, geometry, case_id)
        expected = self.models.num_channels
        if array.shape[0] != expected:
            names = ", ".join(self.models.plan.channel_names.values())
            raise LiversegError(f"{case_id}: the image has {array.shape[0]} channel(s) but the model expects {expected} "
                                f"({names}); give one image per channel (files <case>_0000, <case>_0001, ...)")
        if min(array.shape[1:]) < 1:
            raise LiversegError(f"{case_id}: the image is empty (shape {array.shape[1:]})")
        if not np.isfinite(array).all():
            raise LiversegError(f"{case_id}: the image contains NaN or infinite values; fix the file (NaN survives in "
                                ".nrrd/.mha) or replace them before predicting")
        read = time.perf_counter()
        grids = {}
        for member, keys in zip(self.models.members, self.grid_keys):
            for model in member.models:
                if keys[model.name] not in grids:
                    grids[keys[model.name]] = preprocess_arrays(array, geometry, model.spec)
        seconds = {"read": read - start, "preprocess": time.perf_counter() - read}
        return PreparedCase(case_id, geometry, grids, seconds)

    def infer(self, prepared: PreparedCase) -> Combined:
        """Run the models and the pipeline's combine rule: labels and probabilities on the original grid.

        For an ensemble, every member pipeline's combined output, averaged (:func:`average_combined`).
        """
        seconds = {"network": 0.0, "map_back": 0.0}

        def member_outputs():
            for k, (member, rule) in enumerate(zip(self.models.members, self.combine_rules)):
                case = _Case(self, k, prepared)
                combined = rule(member.pipeline, case)
                for stage, value in case.seconds.items():
                    seconds[stage] += value
                yield combined
                del combined  # not held while the next member runs

        outputs = member_outputs()
        combined = next(outputs) if len(self.models.members) == 1 else average_combined(outputs)
        prepared.seconds.update(seconds)
        return combined

    def finish(self, prepared: PreparedCase, combined: Combined, keep_probabilities: bool = False) -> Prediction:
        """Post-process the combined labels and measure the lesions."""
        start = time.perf_counter()
        label = combined.label
        if self.postprocessing:
            label = apply_steps(label, prepared.geometry.spacing, self.postprocessing, combined.probabilities)
        processed = time.perf_counter()
        report = lesion_report(label, prepared.geometry, combined.tumour_probability, prepared.case_id)
        seconds = {**prepared.seconds, "postprocess": processed - start, "report": time.perf_counter() - processed}
        probabilities = combined.probabilities.astype(np.float16) if keep_probabilities else None
        return Prediction(prepared.case_id, label, prepared.geometry, probabilities,
                          combined.tumour_probability.astype(np.float16), report, seconds)

    def predict(self, image: ImageInput, spacing: Sequence[float] | None = None, geometry: Geometry | None = None,
                case_id: str = "case", keep_probabilities: bool = False) -> Prediction:
        """Segment one image (see the module docstring for the accepted inputs and axis order)."""
        prepared = self.prepare(image, spacing, geometry, case_id)
        return self.finish(prepared, self.infer(prepared), keep_probabilities)

    def _canonical(self, image: ImageInput, spacing: Sequence[float] | None, geometry: Geometry | None,
                   case_id: str) -> tuple[np.ndarray, Geometry]:
        """The image as canonical float32 ``(c, z, y, x)`` and its geometry."""
        if isinstance(image, (str, Path)):
            image = [image]
        if isinstance(image, sitk.Image):
            image = [image]
        if isinstance(image, (list, tuple)) and image and all(isinstance(i, (str, Path)) for i in image):
            return read_channels([Path(i) for i in image])
        if isinstance(image, (list, tuple)) and image and all(isinstance(i, sitk.Image) for i in image):
            sources = [case_id] if len(image) == 1 else [f"{case_id} channel {k}" for k in range(len(image))]
            channels = [sitk_to_array(i, source) for i, source in zip(image, sources)]
            for k, (_, g) in enumerate(channels[1:], 1):
                problem = geometry_mismatch(channels[0][1], g)
                if problem:
                    raise LiversegError(f"{case_id}: channel {k}: {problem} compared with channel 0; "
                                        "channels must share one grid")
            return np.stack([a.astype(np.float32, copy=False) for a, _ in channels]), channels[0][1]
        if not isinstance(image, np.ndarray):
            raise LiversegError(f"{case_id}: cannot predict a {type(image).__name__}; give a SimpleITK image, a file "
                                "path or a numpy array (z, y, x) or (channels, z, y, x) with its spacing")
        if image.ndim not in (3, 4):
            raise LiversegError(f"{case_id}: a numpy image must be (z, y, x) or (channels, z, y, x); got shape {image.shape}")
        array = (image[None] if image.ndim == 3 else image).astype(np.float32, copy=False)
        shape = tuple(int(n) for n in array.shape[1:])
        if geometry is None:
            if spacing is None or len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
                raise LiversegError(f"{case_id}: a numpy image needs its spacing: three positive numbers (z, y, x) in mm; "
                                    f"got {spacing!r}")
            geometry = canonical_geometry(shape, spacing)
        elif tuple(geometry.shape) != shape:
            raise LiversegError(f"{case_id}: the image of shape {shape} does not match its geometry's shape {geometry.shape}")
        return array, geometry


def canonical_geometry(shape: Sequence[int], spacing: Sequence[float],
                       origin: Sequence[float] = (0.0, 0.0, 0.0)) -> Geometry:
    """The geometry of a canonical (LPS, identity direction) ``(z, y, x)`` array with ``spacing`` ``(z, y, x)`` mm."""
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)
    origin = tuple(float(o) for o in origin)
    return Geometry(shape=shape, spacing=spacing, origin=origin, direction=IDENTITY,
                    original_orientation=CANONICAL_ORIENTATION, original_size=shape[::-1],
                    original_spacing=spacing[::-1], original_origin=origin, original_direction=IDENTITY)
