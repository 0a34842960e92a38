"""One registry type for every component's pluggable backends (caption writers,
expression extractors, detectors, negative generators): a name from params.yaml maps to
a factory, so a new backend is one decorated function and one name in the config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

Factory = TypeVar("Factory", bound=Callable[..., object])


class UnknownBackendError(KeyError, ValueError):
    """A backend name nobody registered (a KeyError for lookups, a ValueError for config)."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


class BackendRegistry(dict[str, Factory], Generic[Factory]):
    """Factories by backend name, for one kind of backend."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[Factory], Factory]:
        """Decorator: register a factory under `name` (add the name to the config's Literal too)."""
        def decorate(factory: Factory) -> Factory:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self[name] = factory
            return factory
        return decorate

    def factory(self, name: str) -> Factory:
        if name not in self:
            raise UnknownBackendError(f"unknown {self.kind} {name!r}; known: {sorted(self)}")
        return self[name]
