"""Segmentation networks, looked up by the name a plan gives them.

Built-in: ``"unet"`` (:class:`liverseg.networks.unet.UNet`), ``"ahnet"``
(:class:`liverseg.networks.ahnet.AHNet`, 2D encoder on every slice, 3D decoder) and ``"unet_2d"``
(:class:`liverseg.networks.slice_unet.SliceUNet`, the 2D configuration's U-Net on every slice). Add a network without editing
liverseg, either by decorating it in any module that is imported before training::

    from liverseg.networks import NETWORKS

    @NETWORKS.register("my_net")
    class MyNet(torch.nn.Module):
        def __init__(self, in_channels: int, num_classes: int, **topology): ...

or, from an installed package, through the ``liverseg.networks`` entry-point group (loaded only
when a plan asks for a name that is not registered)::

    [project.entry-points."liverseg.networks"]
    my_net = "my_package.networks:MyNet"
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn

from liverseg.errors import LiversegError
from liverseg.networks.ahnet import AHNet
from liverseg.networks.slice_unet import SliceUNet
from liverseg.networks.unet import UNet
from liverseg.registry import Registry


ENTRY_POINT_GROUP = "liverseg.networks"
NETWORKS: Registry[Callable[..., nn.Module]] = Registry("network", entry_point_group=ENTRY_POINT_GROUP)
NETWORKS.register("unet")(UNet)
NETWORKS.register("ahnet")(AHNet)
NETWORKS.register("unet_2d")(SliceUNet)

__all__ = ["AHNet", "ENTRY_POINT_GROUP", "NETWORKS", "SliceUNet", "UNet", "available_networks", "build_network", "get_network"]


def available_networks() -> list[str]:
    """Names a plan may use: registered networks plus those installed packages declare."""
    return NETWORKS.available()


def get_network(name: str) -> Callable[..., nn.Module]:
    """The network class (or factory) called ``name``; loads an entry-point plugin on first use."""
    return NETWORKS.get(name)


def build_network(name: str, in_channels: int, num_classes: int, **topology: Any) -> nn.Module:
    """Instantiate the network ``name`` with the topology a plan stores for it.

    Topology mistakes (unknown or missing arguments, inconsistent stage lists) come from a plan a
    user can edit, so they are reported as a :class:`LiversegError` naming the network.
    """
    factory = get_network(name)
    try:
        inspect.signature(factory).bind(in_channels, num_classes, **topology)
    except TypeError as error:
        raise LiversegError(f"network '{name}' does not accept the plan's topology {sorted(topology)}: {error}; "
                            f"its parameters are {_parameter_names(factory)}") from None
    except ValueError:  # no introspectable signature (e.g. some builtins): let the call decide
        pass
    try:
        return factory(in_channels, num_classes, **topology)
    except ValueError as error:
        raise LiversegError(f"network '{name}': invalid topology in the plan: {error}") from error


def _parameter_names(factory: Callable[..., Any]) -> str:
    try:
        return ", ".join(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return "(unknown)"
