"""Multi-seed selection by successive halving: train several seeds of a model, keep the best one as the fold's model.

Hänsch et al. (2022) started 24 networks that differed only in their random seed and halved their
number after 5k, 10k, 20k and 40k of 80k iterations, keeping those with the highest validation
Jaccard; the one left trained to the end and beat a single run on an independent test set.
``liverseg_train ... --seeds N`` (:func:`train_seeds`) does the same per model and fold:

- seeds ``s, s+1, ..., s+N-1`` (``s`` = ``--seed``, default 0) each train in
  ``fold_<k>/seeds/seed_<s>/`` on the **full schedule**: a seed paused at a rung and continued
  later follows the learning-rate curve of the full-length run and ends bit-identical to one that
  never paused (the trainer's exact resume, ``stop_after_epoch``);
- **rungs** at 1/16, 1/8, 1/4 and 1/2 of the epochs (:func:`rung_epochs`; rungs that fall on the
  same epoch in a short schedule are merged, and a schedule too short for any rung compares the
  seeds at its end). At each rung every seed still in the race is scored
  (:mod:`liverseg.training.seeds_score`: whole-case Jaccard on the fold's inner validation cases),
  the better half (rounded up) goes on, and at the last rung only the best one; ties go to the
  lower seed, a seed without a score ranks last;
- the **winner** is then copied into ``fold_<k>/`` and trains to the end there, with the final
  validation, so ``fold_<k>/`` is an ordinary results folder that prediction uses unchanged (its
  history starts at epoch 0: the winner's whole run).

``fold_<k>/seeds/selection.json`` is the state and the record of the selection: the seeds, the
rungs, every score, the eliminations and the winner. It is written atomically after each seed's
score and each rung, so a killed selection continued with ``--continue`` trains and scores only
what is missing: finished rungs are never retrained, a seed interrupted mid-rung resumes from its
own checkpoint. ``fold_<k>/seeds/selection.png`` shows every seed's validation curve and rung
scores (:mod:`liverseg.training.seeds_plot`); the elimination table also goes to the log.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

from liverseg.errors import LiversegError
from liverseg.inference.device import resolve_device
from liverseg.io.atomic import atomic_output, read_json, write_json
from liverseg.networks import build_network
from liverseg.planning.plans import ModelPlan, Plan
from liverseg.training import checkpoint as ckpt
from liverseg.training.seeds_plot import plot_selection
from liverseg.training.seeds_score import validation_jaccard
from liverseg.training.settings import TrainSettings, resolve_workers
from liverseg.training.trainer import fold_cases, preprocessed_folder, torch_threads, train_model

log = logging.getLogger(__name__)

SEEDS_FOLDER = "seeds"
STATE_FILE = "selection.json"
PLOT_FILE = "selection.png"
STATE_FORMAT = "liverseg-seed-selection"
RUNG_FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2)

#: ``train_to(seed, epoch)`` trains a seed until ``epoch`` epochs are done; ``score(seed, epoch)`` scores it there.
TrainTo = Callable[[int, int], None]
Score = Callable[[int, int], "float | None"]


def rung_epochs(epochs: int, fractions: Sequence[float] = RUNG_FRACTIONS) -> list[int]:
    """The epochs after which seeds are compared: ``floor(epochs * f)``, at least 1, below ``epochs``, no repeats.

    A schedule too short for any such epoch is compared once, at its end.
    """
    rungs = sorted({max(1, int(epochs * f)) for f in fractions})
    return [r for r in rungs if r < epochs] or [epochs]


def new_state(seeds: Sequence[int], epochs: int, rungs: Sequence[int], **about: Any) -> dict[str, Any]:
    """A fresh selection state (what selection.json holds); ``about`` adds descriptive keys (model, fold, criterion)."""
    return {"format": STATE_FORMAT, "version": 1, **about, "seeds": list(seeds), "epochs": int(epochs),
            "rungs": list(rungs), "alive": list(seeds), "scores": {}, "eliminations": [], "curves": {}, "winner": None,
            "finished": False}


def successive_halving(state: dict[str, Any], train_to: TrainTo, score: Score,
                       save: Callable[[dict[str, Any]], None] = lambda state: None) -> int:
    """Run the rungs of ``state`` that are not done yet and return the winning seed.

    ``state`` (from :func:`new_state`, or as a killed run left it) is updated in place and passed
    to ``save`` after every score and every rung.
    """
    for index, epoch in enumerate(state["rungs"]):
        if index < len(state["eliminations"]):
            continue  # this rung was decided before
        scores = state["scores"].setdefault(str(epoch), {})
        for seed in state["alive"]:
            if str(seed) not in scores:
                train_to(seed, epoch)
                value = score(seed, epoch)
                scores[str(seed)] = None if value is None or not math.isfinite(value) else float(value)
                save(state)
        last = index == len(state["rungs"]) - 1
        keep = 1 if last else math.ceil(len(state["alive"]) / 2)
        ranked = sorted(state["alive"], key=lambda s: (scores[str(s)] is None, -(scores[str(s)] or 0.0), s))
        state["eliminations"].append({"rung": index, "epoch": epoch, "ranking": [[s, scores[str(s)]] for s in ranked],
                                      "kept": ranked[:keep], "eliminated": ranked[keep:]})
        state["alive"] = sorted(ranked[:keep])
        log.info("seed selection, rung %d of %d (epoch %d of %d): %s", index + 1, len(state["rungs"]), epoch,
                 state["epochs"], "; ".join(f"seed {s} {_number(v)} {'kept' if s in ranked[:keep] else 'eliminated'}"
                                           for s, v in state["eliminations"][-1]["ranking"]))
        save(state)
    return state["alive"][0]


def elimination_table(state: dict[str, Any]) -> str:
    """The scores of every seed at every rung and its fate, as a text table (for the log)."""
    rungs = [e["epoch"] for e in state["eliminations"]]
    out_at = {s: e["epoch"] for e in state["eliminations"] for s in e["eliminated"]}
    header = ["seed", *[f"epoch {r}" for r in rungs], "result"]
    rows = []
    for seed in state["seeds"]:
        cells = [str(seed)] + [_number(state["scores"].get(str(r), {}).get(str(seed))) if str(seed) in
                               state["scores"].get(str(r), {}) else "" for r in rungs]
        fate = (f"eliminated at epoch {out_at[seed]}" if seed in out_at else
                "winner" if seed == state["winner"] else "in the race")
        rows.append([*cells, fate])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in [header, *rows])


def train_seeds(plan: Plan, model: ModelPlan, fold: int | str, results_dir: str | Path, settings: TrainSettings,
                num_seeds: int, pipeline: str | None = None, score: Score | None = None) -> dict[str, Any]:
    """Train ``num_seeds`` seeds of ``model`` by successive halving; the winner ends as the run of ``results_dir``.

    Returns the winner's training summary (:func:`~liverseg.training.trainer.train_model`) with the
    selection state under ``"seed_selection"``. ``score(seed, epoch)`` replaces the whole-case
    Jaccard (higher is better). See the module docstring for the folders and the resume.
    """
    check_seed_settings(settings, num_seeds)
    results_dir = Path(results_dir)
    folder = results_dir / SEEDS_FOLDER
    state = _start_or_resume(folder, settings, num_seeds, about={"model": model.name, "fold": fold})
    epochs = state["epochs"]
    base = dataclasses.replace(settings, epochs=epochs, final_validation=False,
                               explicit=settings.explicit | {"epochs", "seed"})

    def seed_folder(seed: int) -> Path:
        return folder / f"seed_{seed}"

    def train_to(seed: int, epoch: int) -> None:
        here = seed_folder(seed)
        resume = (here / ckpt.LATEST).is_file() or (here / ckpt.BEST).is_file()
        log.info("seed %d: training up to epoch %d of %d in %s", seed, epoch, epochs, here)
        seed_settings = dataclasses.replace(base, seed=seed, stop_after_epoch=epoch, continue_training=resume,
                                            init_from=None if resume else base.init_from)
        result = train_model(plan, model, fold, here, seed_settings, pipeline)
        state["curves"][str(seed)] = _curve(result["history"])

    def save(current: dict[str, Any]) -> None:
        write_json(folder / STATE_FILE, current)
        plot_selection(current, folder / PLOT_FILE)

    winner = successive_halving(state, train_to, score or _jaccard_scorer(plan, model, fold, settings, seed_folder), save)
    if state["winner"] is None:
        _take_over(seed_folder(winner), results_dir)
        state["winner"] = winner
        save(state)
        log.info("seed %d won the selection; it trains to the end in %s", winner, results_dir)
    log.info("seed selection of %s, fold %s:\n%s", model.name, fold, elimination_table(state))
    final = dataclasses.replace(settings, seed=winner, epochs=settings.epochs if "epochs" in settings.explicit else epochs,
                                continue_training=True, init_from=None, explicit=settings.explicit | {"seed"})
    summary = train_model(plan, model, fold, results_dir, final, pipeline)
    state["curves"][str(winner)] = _curve(summary["history"])
    state["finished"] = summary["epochs"] >= epochs or summary["early_stopping"] is not None
    save(state)
    return {**summary, "seed_selection": state}


def check_seed_settings(settings: TrainSettings, num_seeds: int) -> None:
    """Raise a LiversegError when ``num_seeds`` is not a positive count, or the settings cannot be combined with a selection.

    One seed is an ordinary run (no selection).
    """
    if isinstance(num_seeds, bool) or not isinstance(num_seeds, int) or num_seeds < 1:
        raise LiversegError(f"--seeds must be a whole number >= 1 (the seeds to choose from); got {num_seeds!r}")
    if num_seeds == 1:
        return
    if settings.time_budget_minutes is not None:
        raise LiversegError("--time-budget shortens each run by its own clock, so seeds would end on different schedules; "
                            "give --seeds or --time-budget, not both")
    if settings.stop_after_epoch is not None:
        raise LiversegError("stop_after_epoch is set by the seed selection itself; leave it out with --seeds")


def _start_or_resume(folder: Path, settings: TrainSettings, num_seeds: int, about: dict[str, Any]) -> dict[str, Any]:
    """The selection state to run: the one in ``folder`` when continuing, else a fresh one (``folder`` emptied)."""
    path = folder / STATE_FILE
    seeds = [settings.seed + i for i in range(num_seeds)]
    if settings.continue_training and path.is_file():
        try:
            state = read_json(path)
        except (OSError, ValueError) as e:
            raise LiversegError(f"{path}: cannot be read ({e}); delete the folder {folder} to start the selection anew") from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise LiversegError(f"{path}: not a liverseg seed selection; delete the folder {folder} to start the selection anew")
        if len(state["seeds"]) != num_seeds or ("seed" in settings.explicit and state["seeds"] != seeds):
            first = state["seeds"][0]
            raise LiversegError(f"{path}: this selection was started with seeds {state['seeds']}; continue it with --seeds "
                                f"{len(state['seeds'])} --seed {first}")
        if "epochs" in settings.explicit and settings.epochs != state["epochs"] and state["winner"] is None:
            raise LiversegError(f"{path}: this selection was started with --epochs {state['epochs']} and its rungs are "
                                "fractions of it; continue it with the same --epochs (once a winner is chosen, more "
                                "epochs extend the winner's run)")
        log.info("continuing the seed selection of %s: %d rung(s) of %d done, seeds %s in the race", path,
                 len(state["eliminations"]), len(state["rungs"]), state["alive"])
        return state
    if settings.continue_training:
        log.warning("--continue: no seed selection in %s yet, starting it from the beginning", folder)
    elif folder.exists():
        log.warning("%s: a previous seed selection is replaced by a new one (give --continue to resume it instead)", folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    epochs = settings.epochs
    state = new_state(seeds, epochs, rung_epochs(epochs), **about,
                      criterion="whole-case Jaccard on the fold's online validation cases (mean over classes)")
    write_json(path, state)
    return state


def _jaccard_scorer(plan: Plan, model: ModelPlan, fold: int | str, settings: TrainSettings,
                    seed_folder: Callable[[int], Path]) -> Score:
    """``score(seed, epoch)``: whole-case Jaccard of the seed's latest checkpoint on the fold's online validation cases."""
    data_folder = preprocessed_folder(plan, model)
    train_cases, cases, final_val = fold_cases(plan, data_folder, fold)
    if fold == "all":
        log.warning("fold 'all' has no held-out cases: the seeds are compared on training cases (fit, not generalisation)")
    elif set(cases) == set(final_val):
        log.warning("fold %s has no inner validation cases: the seeds are compared on its validation cases, which then "
                    "judge the winner too (optimistic)", fold)
    device = resolve_device(settings.device)
    threads = resolve_workers(settings, device).threads
    use_bf16 = {"auto": "auto", "fp32": False, "bf16": True}[settings.precision]

    def score(seed: int, epoch: int) -> float | None:
        path = seed_folder(seed) / ckpt.LATEST
        state = ckpt.load_checkpoint(path)
        network = build_network(model.topology.network, len(plan.channel_names), model.num_classes,
                                **model.topology.network_kwargs())
        ckpt.load_network_weights(network, state, path)
        with torch_threads(threads):
            result = validation_jaccard(network.to(device), model, data_folder, cases, device, use_bf16)
        log.info("seed %d after epoch %d: whole-case Jaccard %s on %d case(s) (per class %s)", seed, state["epoch"],
                 _number(result["score"]), len(cases), ", ".join(_number(j) for j in result["jaccard"]))
        return result["score"]

    return score


def _take_over(seed_dir: Path, results_dir: Path) -> None:
    """Copy the winning seed's checkpoints into the fold's folder, replacing any there."""
    for name in (ckpt.LATEST, ckpt.BEST):
        (results_dir / name).unlink(missing_ok=True)
    for name in (ckpt.LATEST, ckpt.BEST):
        if (seed_dir / name).is_file():
            with atomic_output(results_dir / name) as tmp:
                shutil.copyfile(seed_dir / name, tmp)


def _curve(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-epoch validation numbers of a run that the selection plot draws."""
    return [{"epoch": r["epoch"], "val_loss": r.get("val_loss"), "ema_dice": r.get("ema_dice")} for r in history]


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
