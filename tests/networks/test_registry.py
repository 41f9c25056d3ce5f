"""Networks are found by name: built-ins, decorated plugins, and installed entry-point plugins."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from liverseg.errors import LiversegError
from liverseg.networks import ENTRY_POINT_GROUP, NETWORKS, available_networks, build_network, get_network
from liverseg.networks.unet import UNet

TOPOLOGY = dict(kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]], strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]],
                features_per_stage=[4, 8, 16])

PLUGIN_SOURCE = textwrap.dedent("""
    import torch
    from liverseg.networks import NETWORKS


    class {cls}(torch.nn.Module):
        def __init__(self, in_channels, num_classes, width=4):
            super().__init__()
            self.conv = torch.nn.Conv3d(in_channels, num_classes, 1)
            self.width = width

        def forward(self, x):
            return self.conv(x)
""")


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch):
    """Registrations made by a test disappear after it (the table is swapped for a copy)."""
    monkeypatch.setattr(NETWORKS, "_entries", dict(NETWORKS._entries))
    modules_before = set(sys.modules)
    yield NETWORKS
    for name in set(sys.modules) - modules_before:
        if name.startswith("plugin_"):
            del sys.modules[name]


def write_module(folder: Path, name: str, source: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(source)


def fake_installed_distribution(site: Path, dist: str, entry_points: dict[str, str]) -> None:
    """What pip leaves behind: a <name>-<version>.dist-info folder with METADATA and entry_points.txt."""
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = [f"[{ENTRY_POINT_GROUP}]"] + [f"{name} = {target}" for name, target in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


def test_unet_is_built_by_name():
    net = build_network("unet", 2, 4, deep_supervision=False, **TOPOLOGY)
    assert isinstance(net, UNet)
    assert tuple(net(torch.randn(1, 2, 8, 16, 16)).shape) == (1, 4, 8, 16, 16)
    assert "unet" in available_networks()


def test_unknown_name_lists_what_exists():
    with pytest.raises(LiversegError, match="unknown network 'unte'.*available: .*unet"):
        build_network("unte", 1, 3, **TOPOLOGY)


def test_plan_topology_mistakes_are_user_errors():
    with pytest.raises(LiversegError, match="network 'unet' does not accept.*kernel_size.*kernel_sizes"):
        build_network("unet", 1, 3, kernel_size=[[3, 3, 3]] * 3, strides=TOPOLOGY["strides"],
                      features_per_stage=TOPOLOGY["features_per_stage"])
    with pytest.raises(LiversegError, match="network 'unet': invalid topology.*one entry per stage"):
        build_network("unet", 1, 3, **(TOPOLOGY | {"strides": [[1, 1, 1], [2, 2, 2]]}))


def test_network_registered_from_outside_the_package_is_found(isolated_registry, tmp_path, monkeypatch):
    write_module(tmp_path / "site", "plugin_decorated", PLUGIN_SOURCE.format(cls="TinyNet")
                 + '\nNETWORKS.register("tiny_decorated")(TinyNet)\n')
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert "tiny_decorated" not in available_networks()
    import plugin_decorated  # noqa: F401  (the user's own module: importing it registers the network)

    net = build_network("tiny_decorated", 2, 3, width=7)
    assert type(net).__name__ == "TinyNet" and net.width == 7
    assert tuple(net(torch.randn(1, 2, 4, 4, 4)).shape) == (1, 3, 4, 4, 4)
    assert "tiny_decorated" in available_networks()


@pytest.mark.parametrize("target,module", [
    ("plugin_by_class:PluginNet", "plugin_by_class"),  # the entry point names the class
    ("plugin_by_module", "plugin_by_module"),  # the entry point names a module that registers itself
])
def test_entry_point_plugin_is_loaded_lazily(isolated_registry, tmp_path, monkeypatch, target, module):
    source = PLUGIN_SOURCE.format(cls="PluginNet")
    if ":" not in target:
        source += '\nNETWORKS.register("plugin_net")(PluginNet)\n'
    site = tmp_path / "site"
    write_module(site, module, source)
    fake_installed_distribution(site, "liverseg_plugin_demo", {"plugin_net": target})
    monkeypatch.syspath_prepend(str(site))

    assert "plugin_net" in available_networks()  # listed from the metadata ...
    assert module not in sys.modules  # ... without importing the plugin
    net = build_network("plugin_net", 1, 2)
    assert module in sys.modules
    assert type(net).__name__ == "PluginNet"
    assert "plugin_net" in NETWORKS  # registered now: the next lookup does not read metadata again
    assert get_network("plugin_net") is type(net)


def test_broken_plugin_is_reported_and_does_not_affect_other_networks(isolated_registry, tmp_path, monkeypatch):
    site = tmp_path / "site"
    write_module(site, "plugin_broken", "import a_module_that_does_not_exist\n")
    write_module(site, "plugin_empty", "VALUE = 3\n")
    fake_installed_distribution(site, "liverseg_broken_demo", {"broken_net": "plugin_broken:Net",
                                                               "not_a_net": "plugin_empty:VALUE"})
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(LiversegError, match="broken_net.*liverseg_broken_demo.*ModuleNotFoundError.*a_module_that"):
        build_network("broken_net", 1, 2)
    with pytest.raises(LiversegError, match="not_a_net.*neither registers"):
        build_network("not_a_net", 1, 2)
    assert isinstance(build_network("unet", 1, 2, **TOPOLOGY), UNet)
