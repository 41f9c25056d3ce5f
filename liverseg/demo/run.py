"""The whole product in one call on the CPU: what ``liverseg_demo`` runs.

:func:`run_demo` works in a folder of its own (``workdir``, with the three stores ``raw/``,
``preprocessed/`` and ``results/`` inside, set as ``LIVERSEG_*`` while it runs):

1. generates a `small` phantom training set (``raw/Dataset990_Demo``) and a separate held-out
   test set drawn with another seed (``test/``: images and reference labels);
2. plans and preprocesses it with the ``fast`` preset (``liverseg_plan``);
3. trains the plan's recommended pipeline on fold 0 within what is left of the time budget
   (``liverseg_train --time-budget``: the schedule is fitted to it, not cut off), independent
   models side by side when there is a core for each, the first to finish handing its core to the
   other (:func:`train_pipeline`);
4. predicts the held-out cases with test-time mirroring, post-processing and lesion reports
   (``liverseg_predict``), with the models' final weights: after a short schedule whose learning
   rate decays to zero they are the best the run made, while the best-so-far checkpoint is chosen
   on three inner-validation cases and, for the tumour model, is often an early epoch by chance;
5. evaluates them with the ATLAS profile and the lesion metrics (``liverseg_evaluate``);
6. draws ``overview.png`` (:mod:`liverseg.demo.overview`).

The time budget covers everything; the steps after training take about 10 s here (prediction
6 s: the liver model runs once, unmirrored), so, with a margin for a slower machine,
:data:`RESERVED_SECONDS` of it are kept for them (and the budget's share of training is what is
left after the data and the plan exist).
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from liverseg.data.phantom import generate_dataset
from liverseg.demo.overview import plot_overview
from liverseg.errors import LiversegError
from liverseg.evaluation.evaluate import evaluate_folders
from liverseg.evaluation.report import markdown_table
from liverseg.inference.device import available_cpus, resolve_device
from liverseg.inference.run import predict_folder
from liverseg.paths import ENV_PREPROCESSED, ENV_RAW, ENV_RESULTS
from liverseg.planning.plan_dataset import plan_dataset
from liverseg.planning.plans import PipelineSpec
from liverseg.training import checkpoint as ckpt
from liverseg.training.budget import budget_shares, model_work
from liverseg.training.run import train

log = logging.getLogger(__name__)

DATASET = "Dataset990_Demo"
FOLD = 0
RESERVED_SECONDS = 35.0
MIN_TRAINING_SECONDS = 30.0
# The fast preset plans 20 epochs, which a quiet 2-core machine finishes in about 7 of the 10
# minutes; the demo asks for more than any budget allows, so the time budget (which fits the
# schedule to the time, never beyond the epochs asked for) decides the length and the whole
# budget is used.
EPOCHS_UPPER_BOUND = 1000
OVERVIEW_CASES = 3
# As many training phantoms as ATLAS 2023 has volumes. Generating and planning them takes seconds,
# and in the same 10 minutes the liver model generalises better from 60 than from 20 (held-out
# liver Dice 0.908-0.914 against 0.891-0.899; docs/performance.md).
DEFAULT_CASES = 60
# Sent to a side-by-side training process when another one finished and left its core free.
CORE_FREED_SIGNAL = getattr(signal, "SIGUSR1", None)

NEXT_STEPS = """\
Next, on your own data (docs/getting_started.md):
  liverseg_convert atlas -i ATLAS.zip -d ATLAS      # or put an nnU-Net v2 raw dataset into $LIVERSEG_RAW
  liverseg_plan -d ATLAS
  for f in 0 1 2 3 4; do liverseg_train -d ATLAS -c {pipeline} -f $f; done
  liverseg_find_best -d ATLAS
  liverseg_predict -i scans/ -o predictions/
  liverseg_evaluate -r labels/ -p predictions/ --profile atlas"""


@dataclass
class DemoResult:
    """Where the demo wrote its outputs, what it measured, and how long each step took (seconds)."""

    workdir: Path
    pipeline: str
    predictions: Path
    summary: dict[str, Any]
    overview: Path
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def liver_dice(self) -> float:
        """Mean whole-liver Dice over the held-out cases."""
        return float(self.summary["metrics"]["liver_dice"]["mean"])

    @property
    def tumour_dice(self) -> float:
        """Mean tumour Dice over the held-out cases (cases without tumour in reference and prediction excluded)."""
        value = self.summary["metrics"]["tumor_dice"]["mean"]
        return float("nan") if value is None else float(value)

    def report(self) -> str:
        """What the demo prints: the tables, where everything is, the timings and what to run next."""
        timing = ", ".join(f"{step} {seconds:.0f} s" for step, seconds in self.seconds.items())
        lines = [
            f"liverseg demo: pipeline {self.pipeline}, fold {FOLD}, held-out phantoms evaluated with the ATLAS profile",
            "",
            markdown_table(self.summary),
            "",
            f"work folder:  {self.workdir}",
            f"predictions:  {self.predictions} (label maps, <case>.lesions.json, lesions.csv)",
            f"evaluation:   {self.predictions / 'summary.json'}",
            f"overview:     {self.overview}",
            f"time:         {timing} (total {sum(self.seconds.values()):.0f} s)",
            "",
            NEXT_STEPS.format(pipeline=self.pipeline),
        ]
        return "\n".join(lines)


@contextlib.contextmanager
def demo_stores(workdir: Path) -> Iterator[None]:
    """Point ``LIVERSEG_RAW``/``PREPROCESSED``/``RESULTS`` into ``workdir`` for the block, then restore them."""
    values = {ENV_RAW: workdir / "raw", ENV_PREPROCESSED: workdir / "preprocessed", ENV_RESULTS: workdir / "results"}
    before = {name: os.environ.get(name) for name in values}
    os.environ.update({name: str(path) for name, path in values.items()})
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_demo(workdir: str | Path, minutes: float = 10.0, num_cases: int = DEFAULT_CASES, num_test: int = 5, seed: int = 0,
             device: str = "auto", num_workers: int = 2, size: str = "small") -> DemoResult:
    """Generate phantoms, plan, train, predict, evaluate and draw, within ``minutes``; returns what it did.

    ``workdir`` is created if needed; a previous demo in it is replaced. ``num_cases`` training
    phantoms (at least 5, for five folds), ``num_test`` held-out ones, of phantom ``size``
    (``small`` by default; ``tiny`` runs in seconds but learns little).
    """
    if minutes <= 0:
        raise LiversegError(f"--minutes must be positive; got {minutes}")
    if num_cases < 5 or num_test < 1:
        raise LiversegError(f"the demo needs at least 5 training and 1 test case; got {num_cases} and {num_test}")
    workdir = Path(workdir).expanduser().resolve()
    _check_workdir(workdir)
    started = time.monotonic()
    seconds: dict[str, float] = {}
    with demo_stores(workdir):
        with _timed(seconds, "data"):
            generate_dataset(workdir / "raw" / DATASET, num_cases, seed=seed, size=size, num_workers=num_workers,
                             overwrite=True)
            test = generate_dataset(workdir / "test", num_test, seed=seed + 1000, size=size, num_workers=num_workers,
                                    overwrite=True)
        with _timed(seconds, "plan"):
            plan = plan_dataset(DATASET, num_workers=num_workers, preset="fast").plan
        pipeline = plan.recommended
        budget = max(MIN_TRAINING_SECONDS, minutes * 60 - (time.monotonic() - started) - RESERVED_SECONDS)
        log.info("demo: training %s for fold %d within %.1f minutes", pipeline, FOLD, budget / 60)
        with _timed(seconds, "train"):
            folders = train_pipeline(DATASET, plan.pipeline(pipeline), budget / 60, device, seed)
        predictions = workdir / "predictions"
        with _timed(seconds, "predict"):
            run = predict_folder(test / "imagesTr", predictions, num_workers=1, model=DATASET, pipeline=pipeline,
                                 folds=[FOLD], checkpoint="latest", device=device)
            run.raise_for_failures()
        with _timed(seconds, "evaluate"):
            summary = evaluate_folders(test / "labelsTr", predictions, output=predictions / "summary.json",
                                       profile="atlas", num_workers=num_workers)
        with _timed(seconds, "overview"):
            overview = plot_overview(_overview_cases(test, predictions, summary), _histories(folders),
                                     workdir / "overview.png")
    log.info("demo finished in %.0f s", time.monotonic() - started)
    return DemoResult(workdir, pipeline, predictions, summary, overview, seconds)


def train_pipeline(dataset: str, spec: PipelineSpec, minutes: float, device: str, seed: int) -> list[Path]:
    """Train the pipeline's models on fold 0 of ``dataset`` within ``minutes``; returns their results folders.

    On a CPU with a core per model, independent models (dual_binary's liver and tumour models)
    train side by side, one process and one thread each with augmentation in the process: two
    single-threaded processes use two cores better than one process whose network thread competes
    with its augmentation worker. The model with the most planned work (voxels per batch, the
    liver model) has the whole budget; each other model has its share in proportion to its work
    (the rule of a sequential pipeline, :func:`liverseg.training.budget.budget_shares`), and when
    it finishes, its core goes to the first (one more torch thread), so no core idles: the demo's liver
    epoch (50 steps of batch 4, 10 validation batches) takes 40 s on one thread and 25 s on two.
    A cascade's stages depend on each other and train in order.
    """
    options = {"epochs": EPOCHS_UPPER_BOUND, "final_validation": False, "device": device, "seed": seed,
               "continue_training": False}
    models = spec.models
    independent = len(models) > 1 and all(m.roi is None for m in models)
    if not (independent and resolve_device(device).type == "cpu" and available_cpus() >= len(models)):
        return train(dataset, spec.name, FOLD, time_budget_minutes=minutes, **options)
    work = [model_work(m) for m in models]
    heir = models[work.index(max(work))].name  # trains longest and inherits the cores freed by the others
    shares = budget_shares(models, minutes * 60)
    budgets = {m.name: minutes if m.name == heir else share / 60 for m, share in zip(models, shares)}
    log.info("demo: training %s side by side on %d cores (%s)", ", ".join(m.name for m in models), len(models),
             ", ".join(f"{name} {budget:.1f} min" for name, budget in budgets.items()))
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(len(models), mp_context=context,
                                                           initializer=_child_setup) as pool:
        pids = manager.dict()
        jobs = {pool.submit(_train_one, pids, dataset, spec.name, m.name, budgets[m.name], options): m.name
                for m in models}
        pending = set(jobs)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for job in done:
                job.result()  # a failed model stops the demo with its error
            for job in pending:
                if jobs[job] == heir:
                    _hand_over_core(pids.get(heir), heir, len(done))
        return [job.result() for job in jobs]


def _train_one(pids: Any, dataset: str, pipeline: str, model: str, minutes: float, options: dict[str, Any]) -> Path:
    """One model of a side-by-side training (runs in a demo worker process, which records its pid)."""
    pids[model] = os.getpid()
    return train(dataset, pipeline, FOLD, model=model, num_workers=0, threads=1, time_budget_minutes=minutes,
                 **options)[0]


def _hand_over_core(pid: int | None, model: str, cores: int) -> None:
    """Tell the worker training ``model`` that ``cores`` came free (it then trains with as many more threads)."""
    if pid is None or CORE_FREED_SIGNAL is None:
        return
    log.info("demo: %d core(s) came free; model %s trains on with as many more threads", cores, model)
    for _ in range(cores):  # one signal per core (two at once may arrive as one: a core then stays idle)
        os.kill(pid, CORE_FREED_SIGNAL)


def _child_setup() -> None:
    """In a demo worker: log lines on the console as the demo's own, and take a freed core when told."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if CORE_FREED_SIGNAL is not None:
        signal.signal(CORE_FREED_SIGNAL, _take_freed_core)


def _take_freed_core(signum: int, frame: Any) -> None:
    # A Python signal handler runs in the main thread between bytecodes, so never inside a torch
    # operation: the next operation simply uses one more thread.
    torch.set_num_threads(torch.get_num_threads() + 1)


@contextlib.contextmanager
def _timed(seconds: dict[str, float], step: str) -> Iterator[None]:
    start = time.monotonic()
    yield
    seconds[step] = time.monotonic() - start
    log.info("demo: %s took %.1f s", step, seconds[step])


def _check_workdir(workdir: Path) -> None:
    """Refuse a work folder that holds something other than a previous demo (the demo replaces its contents)."""
    if not workdir.exists():
        workdir.mkdir(parents=True)
        return
    if not workdir.is_dir():
        raise LiversegError(f"{workdir}: --workdir must be a folder; give another path")
    ours = {"raw", "preprocessed", "results", "test", "predictions", "overview.png"}
    foreign = sorted(p.name for p in workdir.iterdir() if p.name not in ours)
    if foreign:
        raise LiversegError(f"{workdir}: holds {', '.join(foreign[:5])}, which the demo did not write; give an empty or "
                            "new folder with --workdir (the demo replaces what it finds there)")
    if not os.access(workdir, os.W_OK):
        raise LiversegError(f"{workdir}: not writable; give another folder with --workdir")


def _overview_cases(test: Path, predictions: Path, summary: dict[str, Any]) -> list[tuple[str, Path, Path, Path, str]]:
    """The first few held-out cases with their files and a caption of their Dice."""
    rows = []
    for case in summary["per_case"][:OVERVIEW_CASES]:
        name = case["case"]
        liver, tumour = case["liver_dice"], case["tumor_dice"]
        caption = f"liver Dice {liver:.3f}" + ("" if tumour is None else f", tumour {tumour:.3f}")
        rows.append((name, test / "imagesTr" / f"{name}_0000.nii.gz", test / "labelsTr" / f"{name}.nii.gz",
                     predictions / f"{name}.nii.gz", caption))
    return rows


def _histories(folders: list[Path]) -> dict[str, list[dict[str, Any]]]:
    """Each trained model's per-epoch records, from its latest checkpoint."""
    histories = {}
    for folder in folders:
        state = ckpt.load_checkpoint(folder / ckpt.LATEST)
        histories[str(state.get("model") or folder.parent.name)] = list(state["history"])
    return histories
