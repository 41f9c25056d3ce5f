"""Small name -> object registries, so plans can name networks, losses, steps and combine rules.

Third-party packages add entries by importing liverseg and calling ``register``; nothing is
discovered by walking the file system.
"""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

from liverseg.errors import LiversegError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of objects (classes or functions) of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
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
        """The object registered as ``name``; a user error listing the known names otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise LiversegError(f"unknown {self.kind} '{name}'; registered: {known}") from None

    def names(self) -> list[str]:
        """Registered names in sorted order."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
