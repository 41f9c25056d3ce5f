"""Small name -> object registries, so plans can name networks, losses, steps and combine rules.

Entries are added with the ``register`` decorator in any imported module, or by installed
packages through a Python entry-point group, loaded lazily the first time a plan asks for a name
that is not registered (so a broken third-party package cannot break plans that do not use it).
Nothing is discovered by walking the file system.
"""
from __future__ import annotations

import logging
from importlib.metadata import EntryPoint, entry_points
from typing import Callable, Generic, TypeVar

from liverseg.errors import LiversegError

T = TypeVar("T")
log = logging.getLogger(__name__)


class Registry(Generic[T]):
    """A named table of objects (classes or functions) of one kind, extendable by plugins."""

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers the decorated object under ``name``."""

        def decorator(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """The object registered as ``name``, loading an entry-point plugin on first use.

        An unknown name is a user error that lists every available name and how to add one.
        """
        if name in self._entries:
            return self._entries[name]
        plugins = self._entry_points()
        if name not in plugins:
            known = ", ".join(self.available()) or "(none)"
            how = f"; register your own with @<registry>.register('{name}') in a module you import"
            if self.entry_point_group:
                how += f", or through the '{self.entry_point_group}' entry-point group of an installed package"
            raise LiversegError(f"unknown {self.kind} '{name}'; available: {known}{how}")
        return self._load_plugin(name, plugins[name])

    def names(self) -> list[str]:
        """Registered names in sorted order (plugins not loaded yet are not included)."""
        return sorted(self._entries)

    def available(self) -> list[str]:
        """Names a plan may use: registered ones plus those installed packages declare."""
        return sorted(set(self._entries) | set(self._entry_points()))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def _entry_points(self) -> dict[str, EntryPoint]:
        if not self.entry_point_group:
            return {}
        return {ep.name: ep for ep in entry_points(group=self.entry_point_group)}

    def _load_plugin(self, name: str, entry: EntryPoint) -> T:
        origin = f"entry point '{name} = {entry.value}'" + (f" of {entry.dist.name}" if entry.dist is not None else "")
        try:
            loaded = entry.load()
        except Exception as error:  # a plugin may fail in any way; say which one and why
            raise LiversegError(
                f"{self.kind} '{name}': cannot load {origin}: {type(error).__name__}: {error}; fix or reinstall that package"
            ) from error
        if name not in self._entries:  # the entry point names the object itself, not a module registering it
            if not callable(loaded):
                raise LiversegError(
                    f"{self.kind} '{name}': {origin} loaded {loaded!r}, which neither registers '{name}' nor is callable; "
                    "point the entry point at the class or function (module:name)"
                )
            self.register(name)(loaded)
        log.info("loaded %s '%s' from %s", self.kind, name, origin)
        return self._entries[name]
