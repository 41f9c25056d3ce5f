"""Model selection on cross-validation: what ``liverseg_find_best`` does (docs/model_selection.md).

1. The trained pipelines of the dataset (or those asked for) must each have every fold asked for
   (default: every fold of splits.json); otherwise nothing is chosen and the missing folds are listed.
2. Each pipeline predicts its cross-validation cases (:mod:`liverseg.selection.crossval`;
   resumable, mirroring off unless ``tta``).
3. Candidates: each pipeline and every ensemble of two or more
   (:mod:`liverseg.selection.candidates`), scored without post-processing on the cases every
   pipeline has predicted (:mod:`liverseg.selection.criterion`); the best one wins.
4. The winner's post-processing is decided on the same cases
   (:mod:`liverseg.selection.postprocessing_choice`).
5. ``<Results>/<Dataset>/inference.json`` (what ``liverseg_predict`` then uses by default) and
   ``find_best.json`` (the table, the decisions, the per-case scores) are written.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from liverseg.data.splits import read_splits
from liverseg.errors import LiversegError
from liverseg.inference.config import check_checkpoint, write_inference_config
from liverseg.inference.models import ensemble_steps, results_dataset, trained_pipeline_folds
from liverseg.io.atomic import write_json
from liverseg.io.dataset import RawDataset
from liverseg.paths import preprocessed_root, raw_root
from liverseg.selection.candidates import Candidate, make_candidates
from liverseg.selection.criterion import CRITERION, Score, rank
from liverseg.selection.crossval import check_raw_images, is_complete, predict_crossval
from liverseg.selection.postprocessing_choice import PostprocessingChoice, choose_postprocessing, optional_steps
from liverseg.selection.report import format_table
from liverseg.selection.scoring import per_case_table, score_candidate
from liverseg.training.run import parse_fold

log = logging.getLogger(__name__)

FIND_BEST_FILE = "find_best.json"
SPLITS_FILE = "splits.json"


@dataclass(frozen=True)
class CandidateResult:
    """A candidate, its score without post-processing, and its per-case scores."""

    candidate: Candidate
    score: Score
    per_case: list[dict[str, Any]]


@dataclass(frozen=True)
class SelectionResult:
    """What :func:`find_best` decided from: candidates best first, post-processing trials, files written."""

    dataset: str
    folds: list[int]
    cases: list[str]
    candidates: list[CandidateResult]
    postprocessing: PostprocessingChoice
    inference_file: Path
    report_file: Path

    @property
    def best(self) -> CandidateResult:
        """The chosen candidate."""
        return self.candidates[0]

    def table(self) -> str:
        """The markdown tables ``liverseg_find_best`` prints (:func:`liverseg.selection.report.format_table`)."""
        return format_table(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (find_best.json)."""
        best = self.best.candidate
        return {
            "dataset": self.dataset, "criterion": CRITERION, "folds": self.folds, "cases": self.cases,
            "candidates": [{"name": r.candidate.name, "pipelines": list(r.candidate.members), **r.score.to_dict()}
                           for r in self.candidates],
            "best": {"name": best.name, "pipelines": list(best.members)},
            "postprocessing": self.postprocessing.to_dict(),
            "inference_file": str(self.inference_file),
            "per_case": {r.candidate.name: per_case_table(r.per_case) for r in self.candidates},
        }


def find_best(dataset: str, pipelines: Sequence[str] | None = None, folds: Sequence[int | str] | None = None,
              ensembles: bool = True, tta: bool = False, checkpoint: str = "best", try_optional_steps: bool = True,
              num_workers: int = 1, **predictor_options: Any) -> SelectionResult:
    """Choose the best pipeline or ensemble of a dataset on cross-validation and write inference.json.

    ``pipelines``: the candidates' pipelines (default every trained one, alphabetically);
    ``folds``: the folds to use (default all of splits.json); ``ensembles``: also try every
    ensemble of two or more pipelines; ``tta``: mirror at test time while predicting the cases;
    ``try_optional_steps``: also try registered post-processing steps the plan does not run;
    ``num_workers``: threads preparing cases ahead of the network and scoring cases;
    ``predictor_options``: ``device``, ``use_bf16``, ... of the predictor.
    """
    checkpoint = check_checkpoint(checkpoint)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise LiversegError(f"-np (worker threads) must be a whole number >= 0; got {num_workers!r}")
    dataset_dir = results_dataset(dataset)
    name = dataset_dir.name
    splits = _read_splits(name)
    folds = _folds(splits, folds, preprocessed_root() / name / SPLITS_FILE)
    names = _pipelines(dataset_dir, pipelines)
    _check_trained_folds(dataset_dir, names, folds, checkpoint)
    raw = _raw_dataset(name)
    wanted = sorted({c for f in folds for c in splits[f]["val"]})
    check_raw_images(raw, wanted)
    references = {c: raw.label_file(c) for c in wanted}
    missing = [str(p) for p in references.values() if not p.is_file()]
    if missing:
        raise LiversegError(f"{missing[0]}: reference label not found ({len(missing)} missing); model selection scores "
                            "the cross-validation predictions against the raw dataset's labelsTr")

    crossval = {n: predict_crossval(dataset_dir, n, splits, folds, raw, checkpoint, tta, num_workers, **predictor_options)
                for n in names}
    failures = "; ".join(f"{n}: {c}: {reason}" for n, r in crossval.items() for c, reason in r.failed.items())
    if failures:
        log.warning("cross-validation cases that could not be predicted: %s", failures)
    plan_steps = {n: trained_pipeline_folds(dataset_dir, n, checkpoint)[0].postprocessing for n in names}
    cache = Path(tempfile.mkdtemp(prefix=".find_best_", dir=dataset_dir))
    try:
        results, choice, cases = select({n: r.folder for n, r in crossval.items()}, references, plan_steps, ensembles,
                                        try_optional_steps, max(1, num_workers), cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    best = results[0].candidate
    inference_file = write_inference_config(dataset_dir, list(best.members), folds, choice.steps, checkpoint)
    result = SelectionResult(name, list(folds), cases, results, choice, inference_file, dataset_dir / FIND_BEST_FILE)
    write_json(result.report_file, result.to_dict())
    log.info("chose %s with post-processing %s; wrote %s and %s", best.name,
             ", ".join(s["name"] for s in choice.steps) or "none", inference_file, result.report_file)
    return result


def select(folders: Mapping[str, Path], references: Mapping[str, Path], plan_steps: Mapping[str, Sequence[Any]],
           ensembles: bool = True, try_optional_steps: bool = True, num_workers: int = 1,
           cache: Path | None = None) -> tuple[list[CandidateResult], PostprocessingChoice, list[str]]:
    """Rank the candidates of cross-validation ``folders`` (pipeline -> crossval folder) and decide the winner's
    post-processing; returns the candidates best first, the post-processing choice and the cases used.

    Only cases of ``references`` (case -> reference label file) that every folder has predicted
    count. ``plan_steps`` gives each pipeline's plan steps (the start of the post-processing
    decision); ``cache`` is a scratch folder for an ensemble winner's label maps.
    """
    cases = [c for c in sorted(references) if all(is_complete(folder, c) for folder in folders.values())]
    left_out = sorted(set(references) - set(cases))
    if left_out:
        log.warning("%d case(s) are left out because not every pipeline predicted them: %s", len(left_out),
                    ", ".join(left_out))
    if not cases:
        raise LiversegError(f"no case has cross-validation predictions from every pipeline ({', '.join(folders)}); "
                            "see the log for the cases that failed")
    references = {c: references[c] for c in cases}
    results = []
    for candidate in make_candidates(dict(folders), ensembles):
        score, rows = score_candidate(candidate, references, (), num_workers)
        results.append(CandidateResult(candidate, score, rows))
        log.info("%s: criterion %.4f (liver Dice %.4f, tumour Dice %.4f), lesion F1 %.4f", candidate.name,
                 score.criterion, score.liver_dice, score.tumour_dice, score.lesion_f1)
    results = [results[i] for i in rank([r.score for r in results])]
    best = results[0].candidate
    start = ensemble_steps([plan_steps[m] for m in best.members])
    scratch = cache if best.is_ensemble else None
    choice = choose_postprocessing(lambda steps: score_candidate(best, references, steps, num_workers, scratch)[0],
                                   start, optional_steps(start) if try_optional_steps else ())
    return results, choice, cases


def trained_pipelines(dataset_dir: Path) -> list[str]:
    """The pipelines of a dataset's results folder with at least one checkpoint, alphabetically."""
    return sorted(p.name for p in dataset_dir.iterdir() if p.is_dir() and any(p.glob("*/fold_*/checkpoint_*.pt")))


def _pipelines(dataset_dir: Path, asked: Sequence[str] | None) -> list[str]:
    trained = trained_pipelines(dataset_dir)
    if not trained:
        raise LiversegError(f"{dataset_dir}: nothing is trained; train the pipelines' folds with liverseg_train first")
    if not asked:
        return trained
    asked = list(dict.fromkeys(asked))
    unknown = [p for p in asked if p not in trained]
    if unknown:
        raise LiversegError(f"pipeline(s) {', '.join(unknown)} of {dataset_dir.name} are not trained; trained: "
                            f"{', '.join(trained)}")
    return asked


def _read_splits(name: str) -> list[dict[str, list[str]]]:
    path = preprocessed_root() / name / SPLITS_FILE
    if not path.is_file():
        raise LiversegError(f"{path}: no cross-validation folds; model selection needs the folds the models were "
                            "trained on (liverseg_plan writes them)")
    return read_splits(path)


def _folds(splits: list[dict[str, list[str]]], folds: Sequence[int | str] | None, path: Path) -> list[int]:
    if folds is None:
        return list(range(len(splits)))
    chosen = []
    for fold in folds:
        parsed = parse_fold(fold)
        if parsed == "all" or not parsed < len(splits):
            raise LiversegError(f"fold {fold} cannot be used for model selection: {path} has folds 0 to "
                                f"{len(splits) - 1} ('all' has no held-out cases)")
        chosen.append(parsed)
    return sorted(set(chosen))


def _check_trained_folds(dataset_dir: Path, names: Sequence[str], folds: Sequence[int], checkpoint: str) -> None:
    """A LiversegError listing, per pipeline and model, the folds without a checkpoint."""
    problems = []
    for name in names:
        _, available = trained_pipeline_folds(dataset_dir, name, checkpoint)
        lacking = {model: [f for f in folds if f not in have] for model, have in available.items()}
        missing = sorted({f for fs in lacking.values() for f in fs})
        if missing:
            detail = "; ".join(f"{m}: {', '.join(map(str, fs))}" for m, fs in lacking.items() if fs)
            problems.append(f"{name} lacks fold(s) {', '.join(map(str, missing))} ({detail})")
    if problems:
        raise LiversegError(f"{dataset_dir.name}: cross-validation needs every pipeline trained on every fold "
                            f"{', '.join(map(str, folds))}: {'; '.join(problems)}. Train them with liverseg_train, "
                            "leave a pipeline out with -c, or choose the folds with -f")


def _raw_dataset(name: str) -> RawDataset:
    folder = raw_root() / name
    if not (folder / "dataset.json").is_file():
        raise LiversegError(f"{folder}: the raw dataset is not there; model selection predicts its training images and "
                            "scores against its labels (set LIVERSEG_RAW to the folder holding it)")
    return RawDataset(folder)
