"""Pipeline templates and planner defaults, as data (read by :mod:`liverseg.planning.templates`).

Each ``<pipeline>.json`` here is a pipeline template (which models, what each learns, how their
outputs combine, which post-processing steps run); ``defaults.json`` holds the training-schedule
defaults, the cross-validation settings and the presets (``default``, ``fast``). A user adds a
pipeline by adding a template file to ``$LIVERSEG_PREPROCESSED/templates`` or a folder given
with ``liverseg_plan --templates``.
"""
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
DEFAULTS_FILE = "defaults.json"
