"""The tables ``liverseg_find_best`` prints: the candidates it chose from and the post-processing trials."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from liverseg.selection.criterion import CRITERION

if TYPE_CHECKING:  # the result imports this module to format itself
    from liverseg.selection.find_best import SelectionResult


def _number(value: float) -> str:
    return f"{value:.4f}"


def _step_text(step: dict[str, Any]) -> str:
    params = ", ".join(f"{k}={v}" for k, v in step.get("params", {}).items())
    return f"{step['name']}({params})" if params else step["name"]


def _steps_text(steps: Sequence[dict[str, Any]]) -> str:
    return ", ".join(_step_text(s) for s in steps) or "none"


def format_table(result: "SelectionResult") -> str:
    """Markdown: the candidates (best first) without post-processing, then the post-processing trials of the winner."""
    lines = [f"Model selection for {result.dataset} on folds {', '.join(map(str, result.folds))} "
             f"({len(result.cases)} cases); criterion: {CRITERION}.", "",
             "| candidate | liver Dice | tumour Dice | criterion | lesion F1 | cases |",
             "|---|---|---|---|---|---|"]
    for k, row in enumerate(result.candidates):
        name = f"**{row.candidate.name}** (best)" if k == 0 else row.candidate.name
        s = row.score
        lines.append(f"| {name} | {_number(s.liver_dice)} | {_number(s.tumour_dice)} | {_number(s.criterion)} | "
                     f"{_number(s.lesion_f1)} | {s.n_cases} |")
    choice = result.postprocessing
    lines += ["", f"Post-processing of {result.best.candidate.name} (criterion without any: "
              f"{_number(result.best.score.criterion)}; with the plan's steps [{_steps_text(choice.start)}]: "
              f"{_number(choice.start_score.criterion)}):", ""]
    if choice.decisions:
        lines += ["| step | trial | criterion with | criterion without | lesion F1 with | lesion F1 without | decision |",
                  "|---|---|---|---|---|---|---|"]
        for d in choice.decisions:
            lines.append(f"| {_step_text(d.step)} | {d.action} | {_number(d.with_step.criterion)} | "
                         f"{_number(d.without_step.criterion)} | {_number(d.with_step.lesion_f1)} | "
                         f"{_number(d.without_step.lesion_f1)} | {d.outcome} |")
        lines.append("")
    lines.append(f"Chosen: {result.best.candidate.name} with post-processing [{_steps_text(choice.steps)}], criterion "
                 f"{_number(choice.score.criterion)}, lesion F1 {_number(choice.score.lesion_f1)}; written to "
                 f"{result.inference_file}")
    return "\n".join(lines)
