"""One registry type for every component's pluggable backends (caption writers,
expression extractors, detectors, negative generators).

A name from params.yaml maps to the factory's location, "package.module:function", and
the module is imported only when that backend is chosen. So a component's interface
never imports its backends (they import the interface: dependencies point one way), and
a backend's heavy dependencies (torch, transformers, spaCy, httpx) load only when it runs.
A new backend is one module and one line in its component's registry (and the name in
the config's Literal; a test keeps the two in step).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar, cast

Factory = TypeVar("Factory", bound=Callable[..., object])


class UnknownBackendError(KeyError, ValueError):
    """A backend name nobody registered (a KeyError for lookups, a ValueError for config)."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


class BackendRegistry(Mapping[str, str], Generic[Factory]):
    """Factory locations by backend name, for one kind of backend."""

    def __init__(self, kind: str, locations: Mapping[str, str]) -> None:
        for name, location in locations.items():
            module, _, attribute = location.partition(":")
            if not module or not attribute:
                raise ValueError(f"{kind} {name!r}: {location!r} is not 'package.module:function'")
        self.kind = kind
        self._locations = dict(locations)

    def __getitem__(self, name: str) -> str:
        return self._locations[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._locations)

    def __len__(self) -> int:
        return len(self._locations)

    def factory(self, name: str) -> Factory:
        """The factory of backend `name`, its module imported now."""
        if name not in self._locations:
            raise UnknownBackendError(f"unknown {self.kind} {name!r}; known: {sorted(self._locations)}")
        module, _, attribute = self._locations[name].partition(":")
        return cast(Factory, getattr(importlib.import_module(module), attribute))
