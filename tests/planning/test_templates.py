"""Pipeline templates as data: the built-in ones, user folders, and bad templates."""
from __future__ import annotations

import json

import pytest

from liverseg.errors import LiversegError
from liverseg.planning.planner import plan_from_fingerprint
from liverseg.planning.templates import load_defaults, load_templates
from liverseg_configs import CONFIG_DIR


def test_built_in_templates_describe_the_three_pipelines():
    templates = load_templates()
    assert {"multiclass", "dual_binary", "cascade"} <= set(templates)
    dual = templates["dual_binary"]
    assert [m.name for m in dual.models] == ["liver", "tumour"]
    assert dual.models[0].learns == {1: 1, 2: 1} and dual.models[1].learns == {2: 1}
    assert dual.combine == "dual_binary_merge"
    assert dual.postprocessing == ("largest_liver_component_fill_holes", "remove_tumour_outside_liver", "close_tumour")
    assert templates["multiclass"].models[0].learns == {1: 1, 2: 2}
    assert templates["cascade"].emit == "large_volume" and templates["cascade"].models[1].roi.from_model == "coarse"


def _template(**changes):
    content = json.loads((CONFIG_DIR / "multiclass.json").read_text())
    content.update(changes)
    return content


def test_a_user_template_folder_adds_a_pipeline(tmp_path, stores, fingerprints):
    folder = tmp_path / "mine"
    folder.mkdir()
    content = _template()
    content["models"] = {"liver_only": dict(content["models"]["multiclass"], learns={"1": 1, "2": 1})}
    (folder / "liver_only.json").write_text(json.dumps(content))
    templates = load_templates([folder])
    assert "liver_only" in templates and "multiclass" in templates
    plan = plan_from_fingerprint(fingerprints.atlas(num_cases=4), templates, load_defaults())
    assert plan.pipeline("liver_only").model("liver_only").num_classes == 2


def test_templates_in_the_preprocessed_store_replace_built_in_ones(stores):
    folder = stores["preprocessed"] / "templates"
    folder.mkdir()
    (folder / "multiclass.json").write_text(json.dumps(_template(description="my multiclass")))
    assert load_templates()["multiclass"].description == "my multiclass"


@pytest.mark.parametrize("changes,message", [
    (dict(combine="vote"), "unknown combine name 'vote'"),
    (dict(postprocessing=["smooth"]), "unknown post-processing step 'smooth'"),
    (dict(emitt="always"), "unknown key.*emitt"),
    (dict(name="other"), "'name' is 'other' but the file is named bad.json"),
    (dict(models={"m": {"learns": {"1": 1}, "resolution": "half", "bbox_target": "liver", "network": "unet", "sampling": {}}}),
     "unknown resolution name 'half'"),
    (dict(models={"m": {"learns": {"0": 1}, "resolution": "full", "bbox_target": "liver", "network": "unet", "sampling": {}}}),
     "learns must map original labels \\(not 0\\)"),
    (dict(models={"m": {"learns": {"1": 1}, "resolution": "full", "bbox_target": "liver", "network": "unet", "sampling": {},
                        "mirroring": {"axes": "x"}}}), "unknown mirroring name 'x'"),
    (dict(models={"m": {"learns": {"1": 1}, "resolution": "full", "bbox_target": "liver", "network": "unet", "sampling": {},
                        "mirroring": {"reason": "why"}}}), "models.m.mirroring: missing key\\(s\\) axes"),
])
def test_bad_templates_name_the_file_and_the_problem(tmp_path, stores, changes, message):
    (tmp_path / "bad.json").write_text(json.dumps(_template(**changes)))
    with pytest.raises(LiversegError, match=message) as error:
        load_templates([tmp_path])
    assert "bad.json" in str(error.value)


def test_the_2d_configuration_is_a_template_of_one_slice_models():
    template = load_templates()["multiclass_2d"]
    assert template.emit == "always" and [(m.name, m.dims, m.network) for m in template.models] == [("multiclass", 2, "unet_2d")]
    assert all(m.dims == 3 for name, t in load_templates().items() if name != "multiclass_2d" for m in t.models)


@pytest.mark.parametrize("changes, message", [
    ({"dims": 4}, "dims must be 3 \\(3D patches\\) or 2"),
    ({"dims": 2, "resolution": "low"}, "a 2D model \\(dims 2\\) works at full resolution"),
])
def test_bad_dims_name_the_file_and_what_to_change(tmp_path, stores, changes, message):
    content = _template()
    content["models"]["multiclass"].update(changes)
    (tmp_path / "bad.json").write_text(json.dumps(content))
    with pytest.raises(LiversegError, match=message) as error:
        load_templates([tmp_path])
    assert "bad.json: models.multiclass" in str(error.value)


def test_missing_template_folder_is_a_user_error(tmp_path, stores):
    with pytest.raises(LiversegError, match="does not exist"):
        load_templates([tmp_path / "nowhere"])


def test_presets_change_network_budget_and_schedule():
    defaults = load_defaults()
    fast, default = defaults.preset("fast"), defaults.preset("default")
    assert fast.network.base_features < default.network.base_features and fast.gpu_memory_gb < default.gpu_memory_gb
    assert defaults.schedule_for(fast).epochs < defaults.schedule_for(default).epochs
    assert defaults.schedule_for(default).optimizer == "sgd_nesterov" and defaults.schedule_for(default).learning_rate == 0.01
