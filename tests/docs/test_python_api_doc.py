"""docs/python_api.md runs as written: its ```python blocks, in order, in one namespace, in a temporary folder.

The example sets the three stores itself (relative to the working directory, here a temporary
folder; the ``stores`` fixture restores the variables afterwards) and trains for two iterations, so
the whole example takes seconds. The checks below look at what it wrote with SimpleITK directly.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import liverseg
from liverseg.io.atomic import read_json

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "python_api.md"


def python_blocks(text: str) -> list[str]:
    """The code of the document's ```python blocks, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def test_python_blocks_are_found():
    blocks = python_blocks("text\n```python\na = 1\n```\n```bash\nb\n```\n```python\nc = 2\nd = 3\n```\n")
    assert blocks == ["a = 1\n", "c = 2\nd = 3\n"]
    assert len(python_blocks(DOCUMENT.read_text(encoding="utf-8"))) >= 4


def test_every_api_name_the_document_mentions_exists():
    text = DOCUMENT.read_text(encoding="utf-8")
    names = set(re.findall(r"\bliverseg\.([A-Za-z_]\w*)", text))
    assert {"plan", "train", "Predictor", "evaluate"} <= names
    assert sorted(n for n in names if not hasattr(liverseg, n)) == []
    assert set(liverseg.__all__) - {"__version__"} <= names, "API names the document does not mention"


def test_the_signatures_in_the_table_are_real():
    """`liverseg.name(a, b=1, **options)` in the table: every argument it names is a parameter of the function."""
    calls = re.findall(r"`(liverseg\.[\w.]+\(.*?\))`", DOCUMENT.read_text(encoding="utf-8"))
    assert len(calls) >= 9
    for text in calls:
        call = ast.parse(text, mode="eval").body
        name, *attributes = ast.unparse(call.func).split(".")[1:]
        module, attribute = liverseg._API[name]  # what the lazy name stands for (see the xfail below)
        target = getattr(importlib.import_module(module), attribute)
        for attribute in attributes:
            target = getattr(target, attribute)
        parameters = inspect.signature(target).parameters
        named = [a.id for a in call.args if isinstance(a, ast.Name)] + [k.arg for k in call.keywords if k.arg]
        assert [n for n in named if n not in parameters] == [], text
        if any(k.arg is None for k in call.keywords):
            assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()), text
        for keyword in call.keywords:
            if keyword.arg and isinstance(keyword.value, ast.Constant):
                assert parameters[keyword.arg].default == keyword.value.value, f"{text}: default of {keyword.arg}"


def test_write_fingerprint_is_the_function_after_planning():
    """``liverseg.fingerprint`` is the subpackage (imported by planning); the API name cannot collide with it."""
    code = "import liverseg; liverseg.plan; assert callable(liverseg.write_fingerprint), liverseg.write_fingerprint"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_python_api_example_runs(stores, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "python_api_doc"}
    root, handlers, threads = logging.getLogger(), logging.getLogger().handlers[:], torch.get_num_threads()
    try:
        for number, block in enumerate(python_blocks(DOCUMENT.read_text(encoding="utf-8")), start=1):
            exec(compile(block, f"docs/python_api.md, python block {number}", "exec"), namespace)
    finally:
        root.handlers[:] = handlers  # the example's logging.basicConfig
        torch.set_num_threads(threads)

    image = sitk.ReadImage(str(tmp_path / "liverseg_data" / "raw" / "Phantom" / "imagesTr" / "phantom_000_0000.nii.gz"))
    segmentation = sitk.ReadImage(str(tmp_path / "phantom_000_seg.nii.gz"))
    assert segmentation.GetSize() == image.GetSize()
    np.testing.assert_allclose(segmentation.GetSpacing(), image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(segmentation.GetDirection(), image.GetDirection(), atol=1e-6)
    assert set(np.unique(sitk.GetArrayFromImage(segmentation))) <= {0, 1, 2}

    canonical = sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS"))
    assert namespace["from_array"].label.shape == canonical.shape
    assert np.array_equal(namespace["from_array"].label, namespace["prediction"].label)  # one scan, two inputs

    assert (tmp_path / "liverseg_data" / "results" / "Phantom" / "multiclass" / "multiclass" / "fold_0"
            / "checkpoint_latest.pt").is_file()
    heldout = sorted(p.name[: -len("_0000.nii.gz")] for p in (tmp_path / "heldout" / "imagesTr").glob("*_0000.nii.gz"))
    assert len(heldout) == 2
    assert sorted(p.name for p in (tmp_path / "predictions").glob("*.nii.gz")) == [f"{c}.nii.gz" for c in heldout]
    summary = namespace["summary"]
    assert sorted(case["case"] for case in summary["per_case"]) == heldout
    assert 0.0 <= summary["metrics"]["liver_dice"]["mean"] <= 1.0
    assert sorted(case["case"] for case in read_json(tmp_path / "summary.json")["per_case"]) == heldout
    assert (tmp_path / "summary_per_case.csv").is_file()
