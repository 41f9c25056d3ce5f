"""Lesion detection metrics: lesions as connected components, N:M correspondences, per-case counts.

Follows Chlebus et al. 2018 (Sci. Rep., hit criterion and Fig. 2) and Hänsch et al. 2022: lesions
that overlap are clustered into correspondences so that each correspondence's Dice is as high as it
can be; a correspondence whose Dice exceeds θ is a hit. The clustering algorithm is ours (their
Algorithm 1 is not published in text); it is described in :func:`match_lesions`. Every counting choice is written down in
``docs/lesion_metrics.md``; dataset-level pooling lives in :mod:`liverseg.evaluation.lesion_aggregate`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from liverseg.errors import LiversegError
from liverseg.lesion_measures import label_components, measure_components

CONNECTIVITIES = (6, 18, 26)
DEFAULT_THRESHOLD = 0.2
RECIST_MEASURABLE_MM = 10.0
#: Groups whose (2^N - 1) * (2^M - 1) candidate subsets exceed this are matched greedily.
MAX_EXHAUSTIVE_SUBSETS = 2**16


@dataclass(frozen=True)
class Correspondence:
    """Reference lesion ids and predicted lesion ids that correspond, their joint Dice, and whether
    that Dice exceeds the hit threshold."""

    reference: tuple[int, ...]
    predicted: tuple[int, ...]
    dice: float
    is_hit: bool


def find_lesions(label: np.ndarray, lesion_label: int = 2, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Number the lesions of a label map: connected components of ``label == lesion_label``.

    Returns the component map (uint32, 0 = no lesion, lesions 1..count) and the count. 26-connectivity
    is the default; 6 is what the LiTS challenge used.
    """
    if connectivity not in CONNECTIVITIES:
        raise LiversegError(f"connectivity must be one of {CONNECTIVITIES}, got {connectivity}")
    label = np.asarray(label)
    if label.ndim != 3:
        raise LiversegError(f"lesions are found in 3D label maps (z, y, x); got an array of shape {label.shape}")
    return label_components(label, lesion_label, connectivity)


def _overlap_pairs(ref: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (reference id, predicted id, overlapping voxels) with a non-zero overlap, from one pass."""
    both = (ref > 0) & (pred > 0)
    r, p = ref[both].astype(np.int64), pred[both].astype(np.int64)
    if r.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    stride = int(p.max()) + 1
    keys, counts = np.unique(r * stride + p, return_counts=True)
    return keys // stride, keys % stride, counts.astype(np.int64)


def _bipartite_groups(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    """Group index of every node (rows first, then columns) of the bipartite graph with edges (rows, cols)."""
    n = n_rows + n_cols
    graph = coo_matrix((np.ones(len(rows)), (rows, cols + n_rows)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _is_connected(block: np.ndarray) -> bool:
    """Whether the bipartite overlap graph of a dense boolean block (rows x cols) is one piece."""
    rows, cols = np.nonzero(block)
    return len(np.unique(_bipartite_groups(rows, cols, *block.shape))) == 1


def _subset_masks(n: int) -> np.ndarray:
    """Every non-empty subset of n members as rows of a 0/1 matrix ((2^n - 1) x n)."""
    return ((np.arange(1, 2**n)[:, None] >> np.arange(n)) & 1).astype(np.float64)


def _best_exhaustive(overlap: np.ndarray, ref_sizes: np.ndarray, pred_sizes: np.ndarray):
    """The connected (reference subset, predicted subset) with the highest Dice, trying all subsets.

    Ties go to the subset with more members (fewer lesions left unmatched), then to the first found.
    A disconnected subset never beats the best connected one (its Dice is a weighted mean of its
    parts' Dice), so the first connected candidate in that order is the optimum.
    """
    r_masks, p_masks = _subset_masks(len(ref_sizes)), _subset_masks(len(pred_sizes))
    intersection = r_masks @ overlap @ p_masks.T
    dice = 2 * intersection / ((r_masks @ ref_sizes)[:, None] + (p_masks @ pred_sizes)[None, :])
    members = r_masks.sum(1)[:, None] + p_masks.sum(1)[None, :]
    order = np.lexsort((np.arange(dice.size), -members.ravel(), -dice.ravel()))
    for flat in order:
        i, j = np.unravel_index(flat, dice.shape)
        rows, cols = r_masks[i] > 0, p_masks[j] > 0
        if _is_connected(overlap[np.ix_(rows, cols)] > 0):
            return np.flatnonzero(rows), np.flatnonzero(cols)
    raise AssertionError("a group always has a connected subset")  # pragma: no cover


def _best_greedy(overlap: np.ndarray, ref_sizes: np.ndarray, pred_sizes: np.ndarray):
    """Grow a correspondence from the best single pair, adding the neighbour that raises Dice most,
    until no neighbour raises it. Used for groups too large to search exhaustively."""
    pair_dice = 2 * overlap / (ref_sizes[:, None] + pred_sizes[None, :])
    i, j = np.unravel_index(np.argmax(pair_dice), pair_dice.shape)
    rows = np.zeros(len(ref_sizes), bool)
    cols = np.zeros(len(pred_sizes), bool)
    rows[i] = cols[j] = True
    while True:
        inter = overlap[np.ix_(rows, cols)].sum()
        size = ref_sizes[rows].sum() + pred_sizes[cols].sum()
        # Dice after adding one more reference (or predicted) lesion that touches the current set.
        add_r = np.where(~rows & (overlap[:, cols].sum(1) > 0),
                         2 * (inter + overlap[:, cols].sum(1)) / (size + ref_sizes), -1.0)
        add_p = np.where(~cols & (overlap[rows, :].sum(0) > 0),
                         2 * (inter + overlap[rows, :].sum(0)) / (size + pred_sizes), -1.0)
        best_r, best_p = add_r.max(initial=-1.0), add_p.max(initial=-1.0)
        if max(best_r, best_p) <= 2 * inter / size:
            return np.flatnonzero(rows), np.flatnonzero(cols)
        if best_r >= best_p:
            rows[np.argmax(add_r)] = True
        else:
            cols[np.argmax(add_p)] = True


def _split_group(overlap: np.ndarray, ref_sizes: np.ndarray, pred_sizes: np.ndarray):
    """Partition one overlap group into correspondences, best Dice first.

    Yields (reference indices, predicted indices, dice) into the group's arrays. Members left over
    after the best correspondence is taken are regrouped by their remaining overlaps and partitioned
    the same way; a member with no remaining overlap belongs to no correspondence.
    """
    n_subsets = (2 ** len(ref_sizes) - 1) * (2 ** len(pred_sizes) - 1)
    best = _best_exhaustive if n_subsets <= MAX_EXHAUSTIVE_SUBSETS else _best_greedy
    rows, cols = best(overlap, ref_sizes, pred_sizes)
    dice = 2 * overlap[np.ix_(rows, cols)].sum() / (ref_sizes[rows].sum() + pred_sizes[cols].sum())
    yield rows, cols, float(dice)
    rest_r = np.setdiff1d(np.arange(len(ref_sizes)), rows)
    rest_p = np.setdiff1d(np.arange(len(pred_sizes)), cols)
    sub = overlap[np.ix_(rest_r, rest_p)]
    if not (sub > 0).any():
        return
    edge_r, edge_p = np.nonzero(sub)
    groups = _bipartite_groups(edge_r, edge_p, len(rest_r), len(rest_p))
    for g in np.unique(groups[np.concatenate([edge_r, len(rest_r) + edge_p])]):
        gr = np.flatnonzero(groups[: len(rest_r)] == g)
        gp = np.flatnonzero(groups[len(rest_r):] == g)
        for r, p, d in _split_group(sub[np.ix_(gr, gp)], ref_sizes[rest_r[gr]], pred_sizes[rest_p[gp]]):
            yield rest_r[gr[r]], rest_p[gp[p]], d


def match_lesions(ref_components: np.ndarray, pred_components: np.ndarray,
                  threshold: float = DEFAULT_THRESHOLD) -> list[Correspondence]:
    """Establish N:M correspondences between reference and predicted lesions (component maps).

    Lesions are grouped by overlap (connected components of the bipartite overlap graph). Within a
    group, the subset of reference and predicted lesions with the highest joint Dice becomes a
    correspondence (all subsets are tried for groups with up to 2^16 candidate pairs of subsets,
    else it is grown greedily from the best pair); the rest of the group is matched again among
    itself. So a lesion whose inclusion would lower a correspondence's Dice is left out of it, as
    in Chlebus et al. Fig. 2c. Lesions that overlap nothing form no correspondence. A
    correspondence is a hit when its Dice is strictly greater than ``threshold``.
    """
    ref_components = np.asarray(ref_components)
    pred_components = np.asarray(pred_components)
    if ref_components.shape != pred_components.shape:
        raise LiversegError(f"reference and prediction differ in shape: {ref_components.shape} vs {pred_components.shape}")
    n_ref, n_pred = int(ref_components.max(initial=0)), int(pred_components.max(initial=0))
    ref_sizes = np.bincount(ref_components.ravel(), minlength=n_ref + 1).astype(np.float64)
    pred_sizes = np.bincount(pred_components.ravel(), minlength=n_pred + 1).astype(np.float64)
    return _match(ref_components, pred_components, ref_sizes, pred_sizes, threshold)


def _match(ref, pred, ref_sizes, pred_sizes, threshold) -> list[Correspondence]:
    """:func:`match_lesions` given per-id voxel counts (index 0 = background, ignored)."""
    r_ids, p_ids, counts = _overlap_pairs(ref, pred)
    if len(counts) == 0:
        return []
    # Work on the lesions that overlap something, numbered compactly.
    r_used, r_idx = np.unique(r_ids, return_inverse=True)
    p_used, p_idx = np.unique(p_ids, return_inverse=True)
    groups = _bipartite_groups(r_idx, p_idx, len(r_used), len(p_used))
    result = []
    for g in np.unique(groups):
        gr = np.flatnonzero(groups[: len(r_used)] == g)
        gp = np.flatnonzero(groups[len(r_used):] == g)
        overlap = np.zeros((len(gr), len(gp)))
        edges = np.isin(r_idx, gr)
        overlap[np.searchsorted(gr, r_idx[edges]), np.searchsorted(gp, p_idx[edges])] = counts[edges]
        for rows, cols, dice in _split_group(overlap, ref_sizes[r_used[gr]], pred_sizes[p_used[gp]]):
            result.append(Correspondence(
                reference=tuple(int(i) for i in r_used[gr[rows]]),
                predicted=tuple(int(i) for i in p_used[gp[cols]]),
                dice=dice, is_hit=bool(dice > threshold)))
    result.sort(key=lambda c: (c.reference, c.predicted))
    return result


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.nan


def lesion_detection(reference_label: np.ndarray, predicted_label: np.ndarray, spacing,
                     threshold: float = DEFAULT_THRESHOLD, connectivity: int = 26,
                     lesion_label: int = 2) -> dict:
    """Detection metrics of one case: what a reader of Chlebus et al. / Hänsch et al. tables expects.

    Counts are in reference lesions for TP and FN (a hit correspondence of N reference lesions is N
    TP) and in predicted lesions for FP; precision = TP / (TP + FP), recall = TP / (TP + FN),
    F1 = 2TP / (2TP + FP + FN). Returns the per-case numbers (NaN where undefined: recall without
    reference lesions, precision without predicted lesions, F1 when both are absent), the
    correspondences, and one row per lesion (``lesions``) with its size, longest axial diameter,
    status (TP/FN for reference, TP/FP for predicted lesions), whether it overlaps the other side at
    all, and the index of its correspondence. See docs/lesion_metrics.md.
    """
    reference_label, predicted_label = np.asarray(reference_label), np.asarray(predicted_label)
    if reference_label.shape != predicted_label.shape:
        raise LiversegError(
            f"reference and prediction differ in shape: {reference_label.shape} vs {predicted_label.shape}; "
            "resample the prediction to the reference grid")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise LiversegError(f"spacing must be three positive numbers (z, y, x) in mm, got {spacing}")
    ref, n_ref = find_lesions(reference_label, lesion_label, connectivity)
    pred, n_pred = find_lesions(predicted_label, lesion_label, connectivity)
    ref_rows = measure_components(ref, spacing) if n_ref else []
    pred_rows = measure_components(pred, spacing) if n_pred else []
    ref_sizes = np.zeros(n_ref + 1)
    ref_sizes[[r["id"] for r in ref_rows]] = [r["num_voxels"] for r in ref_rows]
    pred_sizes = np.zeros(n_pred + 1)
    pred_sizes[[r["id"] for r in pred_rows]] = [r["num_voxels"] for r in pred_rows]
    correspondences = _match(ref, pred, ref_sizes, pred_sizes, threshold)

    lesions = []
    for source, rows, attr, hit_status, miss_status in (
            ("reference", ref_rows, "reference", "TP", "FN"), ("predicted", pred_rows, "predicted", "TP", "FP")):
        owner = {i: k for k, c in enumerate(correspondences) for i in getattr(c, attr)}
        for row in rows:
            k = owner.get(row["id"])
            lesions.append({
                "source": source, "id": row["id"], "num_voxels": row["num_voxels"],
                "volume_ml": row["volume_ml"], "longest_axial_diameter_mm": row["longest_axial_diameter_mm"],
                "status": hit_status if k is not None and correspondences[k].is_hit else miss_status,
                "overlaps": k is not None, "correspondence": k,
            })
    hits = [c for c in correspondences if c.is_hit]
    tp = sum(len(c.reference) for c in hits)
    fp = n_pred - sum(len(c.predicted) for c in hits)
    fn = n_ref - tp
    measurable = [les for les in lesions if les["source"] == "reference"
                  and les["longest_axial_diameter_mm"] >= RECIST_MEASURABLE_MM]
    tp_10mm = sum(les["status"] == "TP" for les in measurable)
    ref_voxels, pred_voxels = ref_sizes.sum(), pred_sizes.sum()
    intersection = np.count_nonzero((ref > 0) & (pred > 0)) if n_ref and n_pred else 0
    return {
        "threshold": threshold, "connectivity": connectivity,
        "n_reference": n_ref, "n_predicted": n_pred, "tp": tp, "fp": fp, "fn": fn,
        "recall": _ratio(tp, n_ref), "precision": _ratio(tp, tp + fp), "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "n_reference_10mm": len(measurable), "tp_10mm": tp_10mm, "recall_10mm": _ratio(tp_10mm, len(measurable)),
        "dice_case": 1.0 if ref_voxels + pred_voxels == 0 else float(2 * intersection / (ref_voxels + pred_voxels)),
        "dice_correspondence": float(np.mean([c.dice for c in hits])) if hits else math.nan,
        "merge_errors": sum(len(c.reference) - 1 for c in hits),
        "split_errors": sum(max(0, len(c.predicted) - len(c.reference)) for c in hits),
        "correspondences": [{"reference": list(c.reference), "predicted": list(c.predicted),
                             "dice": c.dice, "is_hit": c.is_hit} for c in correspondences],
        "lesions": lesions,
    }
