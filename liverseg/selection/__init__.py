"""Model selection on cross-validation: what ``liverseg_find_best`` does (docs/model_selection.md).

- :mod:`~liverseg.selection.crossval`: each trained pipeline predicts every fold's validation
  cases with that fold's models, through the real predictor;
- :mod:`~liverseg.selection.candidates`: the candidates (each pipeline, every ensemble of two or
  more) and their label maps and probabilities on those cases;
- :mod:`~liverseg.selection.criterion`: how a candidate is scored and candidates are compared;
- :mod:`~liverseg.selection.scoring`: a candidate scored over the cases (with post-processing);
- :mod:`~liverseg.selection.postprocessing_choice`: which post-processing steps help, decided on
  the cross-validation predictions;
- :mod:`~liverseg.selection.report`: the tables the command prints;
- :mod:`~liverseg.selection.find_best`: all of it, the table, ``find_best.json`` and the
  ``inference.json`` that ``liverseg_predict`` uses by default.
"""
