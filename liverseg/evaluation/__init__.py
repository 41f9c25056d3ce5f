"""Evaluation of label maps: overlap and surface metrics, several raters, summaries.

Python API: :func:`evaluate_case` on arrays, :func:`evaluate_folders` on folders of label files
(the ``liverseg_evaluate`` command), :func:`get_profile` for the metric definitions in use.
"""
from __future__ import annotations

from liverseg.evaluation.evaluate import evaluate_folders
from liverseg.evaluation.metrics import evaluate_case
from liverseg.evaluation.profiles import PROFILES, MetricProfile, get_profile

__all__ = ["PROFILES", "MetricProfile", "evaluate_case", "evaluate_folders", "get_profile"]
