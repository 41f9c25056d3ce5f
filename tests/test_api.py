"""The top-level Python API: every name resolves to the function its command uses, without importing torch early."""
from __future__ import annotations

import subprocess
import sys

import pytest

import liverseg
from liverseg.cli import demo, evaluate, plan, predict, train


def test_every_api_name_resolves():
    for name in liverseg.__all__:
        assert getattr(liverseg, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        liverseg.nonexistent  # noqa: B018


def test_api_functions_are_the_ones_the_commands_call():
    assert liverseg.plan is plan.plan_dataset
    assert liverseg.train is train.train
    assert liverseg.Predictor is predict.Predictor
    assert liverseg.evaluate is evaluate.evaluate_folders
    assert liverseg.run_demo is demo.run_demo


def test_importing_liverseg_does_not_import_torch():
    code = "import sys, liverseg; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
