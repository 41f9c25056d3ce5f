"""Which post-processing steps help, decided on the cross-validation predictions of the chosen candidate.

Start from the candidate's plan steps (for an ensemble the members' steps combined:
:func:`liverseg.inference.models.ensemble_steps`). **Removal**, one step at a time in the plan's
order: the step is tried away from the current list; it stays when the list with it scores at
least as well as without it (:func:`~liverseg.selection.criterion.compare`: criterion, then lesion
F1), so a step that changes nothing is kept as the plan wanted. **Addition** (optional): each
registered step not in the list yet, with its default parameters, is tried at the end of the
list and kept only when it scores strictly better. Each trial scores every case
(:mod:`liverseg.selection.scoring`); a list already scored is not scored again.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from liverseg.errors import LiversegError
from liverseg.postprocessing import available_steps, get_step, normalise_steps
from liverseg.selection.criterion import Score, better

Steps = list[dict[str, Any]]


@dataclass(frozen=True)
class Decision:
    """One trial: a step removed from or added to the list, the scores with and without it, and the outcome."""

    step: dict[str, Any]
    action: str  # "remove" or "add"
    with_step: Score
    without_step: Score
    kept: bool

    @property
    def outcome(self) -> str:
        """``kept``, ``removed``, ``added`` or ``not added``."""
        if self.action == "remove":
            return "kept" if self.kept else "removed"
        return "added" if self.kept else "not added"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {"step": self.step, "action": self.action, "with_step": self.with_step.to_dict(),
                "without_step": self.without_step.to_dict(), "outcome": self.outcome}


@dataclass(frozen=True)
class PostprocessingChoice:
    """The steps chosen, the list started from, the scores of both, and every trial in order."""

    start: Steps
    steps: Steps
    start_score: Score
    score: Score
    decisions: tuple[Decision, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {"start": self.start, "start_score": self.start_score.to_dict(), "steps": self.steps,
                "score": self.score.to_dict(), "decisions": [d.to_dict() for d in self.decisions]}


def optional_steps(start: Sequence[dict[str, Any]]) -> Steps:
    """Registered steps not in ``start`` that run with their default parameters, in registry order."""
    present = {s["name"] for s in start}
    steps = []
    for name in available_steps():
        if name in present:
            continue
        parameters = inspect.signature(get_step(name)).parameters.values()
        required = [p.name for p in parameters if p.default is inspect.Parameter.empty
                    and p.name not in ("label", "spacing", "probabilities")
                    and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
        if not required:
            steps.extend(normalise_steps([name], "optional post-processing"))
    return steps


def choose_postprocessing(evaluate: Callable[[Steps], Score], start: Sequence[dict[str, Any]],
                          optional: Sequence[dict[str, Any]] = ()) -> PostprocessingChoice:
    """Decide the steps (module docstring); ``evaluate(steps)`` scores a step list on the cases."""
    start = normalise_steps(list(start), "post-processing to start from")
    names = [s["name"] for s in start]
    if len(set(names)) != len(names):
        raise LiversegError(f"post-processing to start from names a step twice ({', '.join(names)}); "
                            "each step can be decided on only once")
    scores: dict[str, Score] = {}

    def score(steps: Steps) -> Score:
        key = json.dumps(steps, sort_keys=True)
        if key not in scores:
            scores[key] = evaluate(steps)
        return scores[key]

    current = list(start)
    current_score = start_score = score(current)
    decisions = []
    for step in start:
        trial = [s for s in current if s is not step]
        trial_score = score(trial)
        keep = not better(trial_score, current_score)
        decisions.append(Decision(step, "remove", current_score, trial_score, keep))
        if not keep:
            current, current_score = trial, trial_score
    for step in optional:
        trial = current + [step]
        trial_score = score(trial)
        add = better(trial_score, current_score)
        decisions.append(Decision(step, "add", trial_score, current_score, add))
        if add:
            current, current_score = trial, trial_score
    return PostprocessingChoice(list(start), current, start_score, current_score, tuple(decisions))
