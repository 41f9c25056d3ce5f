"""The picture of a multi-seed selection: every seed's validation curve and its scores at the rungs.

``selection.png`` has two panels over the epochs of the schedule. The upper one draws each seed's
online validation loss per epoch; a seed's line ends where it was eliminated (its run paused
there for good) and the winner's goes on to the end, drawn thicker. The lower one draws the
score each seed got at each rung (whole-case Jaccard), a cross marking the rung that eliminated it.
Dotted vertical lines mark the rungs. Redrawn after every score, so it can be watched.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from liverseg.io.atomic import save_figure


def plot_selection(state: Mapping[str, Any], path: str | Path) -> Path:
    """Draw the seeds' validation curves and rung scores of a selection ``state`` (selection.json) into ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eliminated_at = {s: e["epoch"] for e in state["eliminations"] for s in e["eliminated"]}
    colours = plt.get_cmap("tab10" if len(state["seeds"]) <= 10 else "tab20")
    figure, (loss_axis, score_axis) = plt.subplots(2, 1, figsize=(9, 8), sharex=True)
    try:
        for index, seed in enumerate(state["seeds"]):
            colour = colours(index % colours.N)
            width = 2.5 if seed == state.get("winner") else 1.0
            curve = state["curves"].get(str(seed), [])
            loss_axis.plot([r["epoch"] + 1 for r in curve], [_nan(r["val_loss"]) for r in curve], color=colour,
                           linewidth=width, marker=".", label=f"seed {seed}")
            rungs = [int(epoch) for epoch, scores in state["scores"].items() if str(seed) in scores]
            values = [_nan(state["scores"][str(r)][str(seed)]) for r in rungs]
            score_axis.plot(rungs, values, color=colour, linewidth=width, marker="o")
            if seed in eliminated_at and str(seed) in state["scores"].get(str(eliminated_at[seed]), {}):
                score_axis.plot([eliminated_at[seed]], [_nan(state["scores"][str(eliminated_at[seed])][str(seed)])],
                                color=colour, marker="x", markersize=12, markeredgewidth=2)
        for axis in (loss_axis, score_axis):
            for epoch in state["rungs"]:
                axis.axvline(epoch, color="tab:gray", linestyle=":", linewidth=1)
            axis.grid(alpha=0.3)
        loss_axis.set_ylabel("validation loss")
        loss_axis.set_title(f"seed selection: {len(state['seeds'])} seeds, rungs at epochs "
                            f"{', '.join(map(str, state['rungs']))} of {state['epochs']}"
                            + ("" if state.get("winner") is None else f", winner seed {state['winner']}"))
        loss_axis.legend(loc="upper right", fontsize="small", ncol=2)
        score_axis.set_ylabel("score at the rung (Jaccard)")
        score_axis.set_xlabel("epochs done")
        score_axis.set_xlim(0, state["epochs"] + 0.5)
        figure.tight_layout()
    except BaseException:
        plt.close(figure)
        raise
    return save_figure(figure, path, dpi=80)


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)
