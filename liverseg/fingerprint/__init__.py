"""The dataset fingerprint: what the training data is, measured once, read by the planner.

``liverseg_fingerprint -d NAME`` (or :func:`write_fingerprint`) writes
``$LIVERSEG_PREPROCESSED/<dataset>/fingerprint.json`` and ``fingerprint.png``. Modules:
:mod:`~liverseg.fingerprint.case` (one case), :mod:`~liverseg.fingerprint.dataset` (all cases,
summaries, files), :mod:`~liverseg.fingerprint.plot` (the figure).

fingerprint.json (``version`` 1). Every triple and every box is in ``(z, y, x)`` order
(``axis_order: "zyx"``); lengths are in mm, volumes in ml, boxes are ``[[start, stop], ...]`` in
voxels with ``stop`` exclusive; a voxel counts as a box of size ``spacing`` (see
:mod:`liverseg.lesion_measures`). Floats are rounded to 6 significant digits.

Top level:
    version, axis_order, dataset (folder name), channel_names, labels,
    lesion_label (label value whose 26-connected components are lesions), lesion_connectivity,
    intensity_sampling {foreground_voxels_per_case, seed}, num_cases, summary, cases.

``summary`` (over all training cases). A *distribution* is ``{n, mean, min, p5, p25, median, p75,
p95, max}``; an *axis distribution* has the same keys with ``[z, y, x]`` lists as values:
    spacing, shape, shape_after_crop, extent_mm    axis distributions over cases
    anisotropy                  distribution of slice spacing / max(in-plane spacings)
    cases_not_axis_aligned, cases_without_liver    lists of case ids
    liver_extent_mm             axis distribution of the liver (labels >= 1) box, over cases
    liver_volume_ml             distribution over cases
    num_lesions, cases_without_lesions, lesions_at_least_10mm    counts
    lesions_per_case            distribution over cases
    lesion_extent_mm            axis distribution over all lesions of all cases
    lesion_volume_ml, lesion_diameter_mm    distributions over all lesions (longest axial diameter)
    foreground_intensity        per channel ("0", ...): statistics of the foreground (label > 0)
                                voxels sampled from every case and pooled, as nnU-Net does:
                                num_voxels, mean, std, min, max, percentile_00_5,
                                percentile_02_0, median, percentile_98_0, percentile_99_5

``cases`` maps each case id (sorted) to:
    shape, spacing, extent_mm (shape x spacing), image_volume_ml,
    original_orientation (e.g. "RAS"), original_direction (9 numbers as on disk, SimpleITK order),
    axis_aligned (direction only permutes and flips axes),
    crop_bbox, shape_after_crop     nnU-Net's crop: box of voxels non-zero in any channel
    liver                           null, or {bbox, extent_voxels, extent_mm, num_voxels, volume_ml}
                                    of labels >= 1 (liver including tumour)
    num_lesions, tumour_volume_ml
    lesions                         list of {id, bbox, extent_voxels, extent_mm, num_voxels,
                                    volume_ml, longest_axial_diameter_mm, centroid_voxel}
    foreground_intensity            per channel: the statistics above over ALL the case's
                                    foreground voxels (null when the label is empty)
"""
from liverseg.fingerprint.case import CaseFingerprint, compute_case_fingerprint
from liverseg.fingerprint.dataset import (
    FINGERPRINT_FILE,
    FINGERPRINT_VERSION,
    compute_fingerprint,
    format_summary,
    load_fingerprint,
    write_fingerprint,
)
from liverseg.fingerprint.plot import plot_fingerprint

__all__ = [
    "FINGERPRINT_FILE",
    "FINGERPRINT_VERSION",
    "CaseFingerprint",
    "compute_case_fingerprint",
    "compute_fingerprint",
    "format_summary",
    "load_fingerprint",
    "plot_fingerprint",
    "write_fingerprint",
]
