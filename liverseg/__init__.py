"""liverseg: self-configuring liver and liver-tumour segmentation for 3D abdominal MRI and CT.

The Python API is the commands' own functions::

    import liverseg

    liverseg.plan("ATLAS", preset="fast")                       # liverseg_plan
    liverseg.train("ATLAS", "dual_binary", 0)                   # liverseg_train
    liverseg.find_best("ATLAS")                                 # liverseg_find_best
    predictor = liverseg.Predictor.from_folder("ATLAS")         # liverseg_predict, one image at a time
    prediction = predictor.predict(image)                       # SimpleITK image, file, or (z, y, x) array + spacing
    liverseg.predict_folder("scans/", "predictions/", model="ATLAS")
    liverseg.evaluate("labels/", "predictions/", profile="atlas")   # liverseg_evaluate
    liverseg.run_demo("demo/", minutes=10)                      # liverseg_demo

Names are imported on first use, so ``import liverseg`` stays cheap (no torch until it is needed).
(The fingerprint function is ``write_fingerprint``: ``liverseg.fingerprint`` is the subpackage.)
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "generate_phantoms": ("liverseg.data.phantom", "generate_dataset"),
    "write_fingerprint": ("liverseg.fingerprint.dataset", "write_fingerprint"),
    "plan": ("liverseg.planning.plan_dataset", "plan_dataset"),
    "train": ("liverseg.training.run", "train"),
    "find_best": ("liverseg.selection.find_best", "find_best"),
    "Predictor": ("liverseg.inference.predictor", "Predictor"),
    "predict_folder": ("liverseg.inference.run", "predict_folder"),
    "evaluate": ("liverseg.evaluation.evaluate", "evaluate_folders"),
    "compare": ("liverseg.evaluation.statistics", "compare_summaries"),
    "run_demo": ("liverseg.demo.run", "run_demo"),
    "LiversegError": ("liverseg.errors", "LiversegError"),
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'liverseg' has no attribute {name!r}")
    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
