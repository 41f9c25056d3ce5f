"""How model selection scores a candidate and compares two: the default criterion (docs/model_selection.md).

Per case, on the raw reference label of the case:

- **liver Dice**: Dice of the whole liver, labels 1 and 2 together;
- **tumour Dice**: Dice of label 2. A case where neither the reference nor the prediction has any
  tumour counts as 1 (nothing to find, nothing found); so does the rare case without any liver
  in either, for liver Dice;
- **lesions**: the lesion detection counts of
  :func:`liverseg.evaluation.lesions.lesion_detection` (26-connected lesions, a hit when a
  correspondence's Dice exceeds 0.2).

Over the cases: the mean liver Dice and the mean tumour Dice; the **criterion** is their mean;
**lesion F1** is pooled over the cases, 2 ΣTP / (2 ΣTP + ΣFP + ΣFN)
(:func:`liverseg.evaluation.lesion_aggregate.aggregate_lesion_metrics`), and 1 when no case has
a lesion in reference or prediction.

Comparing: the higher criterion wins; criteria within :data:`TIE_TOLERANCE` of each other are a
tie, which the higher lesion F1 breaks. A full tie goes to the candidate listed first (a single
pipeline before an ensemble, smaller ensembles before larger ones).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from liverseg.evaluation.lesion_aggregate import aggregate_lesion_metrics
from liverseg.evaluation.lesions import lesion_detection
from liverseg.evaluation.metrics import dice

LIVER, TUMOUR = 1, 2
# Criteria this close are equal: they differ only by the order floating-point sums were taken in.
TIE_TOLERANCE = 1e-9
CRITERION = ("mean of whole-liver Dice (labels 1+2) and tumour Dice (label 2), each averaged over cases (tumour Dice "
             "1 where neither reference nor prediction has tumour); ties broken by pooled lesion F1")
_LESION_KEYS = ("n_reference", "n_predicted", "tp", "fp", "fn", "n_reference_10mm", "tp_10mm", "merge_errors",
                "split_errors")


@dataclass(frozen=True)
class Score:
    """A candidate's numbers over the cases: mean liver Dice, mean tumour Dice, pooled lesion F1, case count."""

    liver_dice: float
    tumour_dice: float
    lesion_f1: float
    n_cases: int

    @property
    def criterion(self) -> float:
        """The mean of the mean liver Dice and the mean tumour Dice."""
        return (self.liver_dice + self.tumour_dice) / 2

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary, the criterion included."""
        return {"liver_dice": self.liver_dice, "tumour_dice": self.tumour_dice, "criterion": self.criterion,
                "lesion_f1": self.lesion_f1, "n_cases": self.n_cases}


def case_scores(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float]) -> dict[str, Any]:
    """Liver Dice, tumour Dice and the lesion detection counts of one case (module docstring)."""
    reference, prediction = np.asarray(reference), np.asarray(prediction)
    lesions = lesion_detection(reference, prediction, spacing)
    return {"liver_dice": dice(reference > 0, prediction > 0, both_empty=1.0),
            "tumour_dice": dice(reference == TUMOUR, prediction == TUMOUR, both_empty=1.0),
            **{k: lesions[k] for k in _LESION_KEYS}}


def summarise(per_case: Sequence[dict[str, Any]]) -> Score:
    """The :class:`Score` of a candidate from its :func:`case_scores` over the cases."""
    if not per_case:
        raise ValueError("no cases to score")
    f1 = aggregate_lesion_metrics([dict(c) for c in per_case])["pooled"]["f1"]
    return Score(float(np.mean([c["liver_dice"] for c in per_case])), float(np.mean([c["tumour_dice"] for c in per_case])),
                 1.0 if math.isnan(f1) else float(f1), len(per_case))


def compare(a: Score, b: Score) -> int:
    """1 when ``a`` is better than ``b``, -1 when worse, 0 on a tie (criterion, then lesion F1)."""
    for x, y in ((a.criterion, b.criterion), (a.lesion_f1, b.lesion_f1)):
        if abs(x - y) > TIE_TOLERANCE:
            return 1 if x > y else -1
    return 0


def better(a: Score, b: Score) -> bool:
    """Whether ``a`` is strictly better than ``b``."""
    return compare(a, b) > 0


def rank(scores: Sequence[Score]) -> list[int]:
    """Indices of ``scores``, best first; ties keep their order."""
    order = functools.cmp_to_key(lambda i, j: -compare(scores[i], scores[j]))
    return sorted(range(len(scores)), key=order)
