"""A candidate scored over the cross-validation cases, optionally after a list of post-processing steps.

Each case: the raw reference label is read, the candidate's label map is taken
(:meth:`~liverseg.selection.candidates.Candidate.label`), post-processed with the steps (on the
reference's spacing; a step that declares a ``probabilities`` parameter also gets the candidate's
label probabilities, as at prediction time), and scored
(:func:`~liverseg.selection.criterion.case_scores`). Cases run in threads: reading, numpy,
SimpleITK and the connected components release the GIL for the heavy parts.
"""
from __future__ import annotations

import inspect
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

from tqdm import tqdm

from liverseg.errors import LiversegError
from liverseg.io.images import read_image
from liverseg.postprocessing import apply_steps, get_step
from liverseg.selection.candidates import Candidate
from liverseg.selection.criterion import Score, case_scores, summarise


def needs_probabilities(steps: Sequence[dict[str, Any]]) -> bool:
    """Whether any step declares a ``probabilities`` parameter."""
    return any("probabilities" in inspect.signature(get_step(s["name"])).parameters for s in steps)


def score_case(candidate: Candidate, case: str, reference: Path, steps: Sequence[dict[str, Any]] = (),
               cache: Path | None = None) -> dict[str, Any]:
    """:func:`~liverseg.selection.criterion.case_scores` of ``candidate`` on one case after ``steps``."""
    truth, geometry = read_image(reference)
    label = candidate.label(case, cache)
    if label.shape != truth.shape:
        raise LiversegError(f"{candidate.folders[0]}: the prediction of {case} has shape {label.shape} but its reference "
                            f"{reference} has {truth.shape}; delete the crossval folder and run again")
    if steps:
        probabilities = candidate.probabilities(case) if needs_probabilities(steps) else None
        label = apply_steps(label, geometry.spacing, list(steps), probabilities)
    return {"case": case, **case_scores(truth, label, geometry.spacing)}


def score_candidate(candidate: Candidate, references: Mapping[str, Path], steps: Sequence[dict[str, Any]] = (),
                    num_workers: int = 1, cache: Path | None = None) -> tuple[Score, list[dict[str, Any]]]:
    """The candidate's :class:`~liverseg.selection.criterion.Score` over the cases of ``references``
    (case -> reference label file) after ``steps``, and the per-case scores in case order."""
    cases = sorted(references)
    desc = f"scoring {candidate.name}" + (f" ({len(steps)} step(s))" if steps else "")

    def one(case: str) -> dict[str, Any]:
        return score_case(candidate, case, references[case], steps, cache)

    bar = dict(total=len(cases), desc=desc, unit="case", disable=None, leave=False)
    if num_workers <= 1 or len(cases) <= 1:
        rows = list(tqdm(map(one, cases), **bar))
    else:
        with ThreadPoolExecutor(min(num_workers, len(cases)), thread_name_prefix="score") as pool:
            rows = list(tqdm(pool.map(one, cases), **bar))
    return summarise(rows), rows


def per_case_table(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Case -> its liver and tumour Dice (rounded), for find_best.json."""
    return {r["case"]: {"liver_dice": round(float(r["liver_dice"]), 5), "tumour_dice": round(float(r["tumour_dice"]), 5),
                        "lesion_tp": int(r["tp"]), "lesion_fp": int(r["fp"]), "lesion_fn": int(r["fn"])}
            for r in rows}

