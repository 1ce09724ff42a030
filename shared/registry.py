"""A small typed registry used by every extension point (techniques, exporters, backends, schemas)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from shared.errors import DuplicateEntryError, UnknownEntryError

K = TypeVar("K")
V = TypeVar("V")


class Registry(Generic[K, V]):
    """Maps keys to entries; rejects duplicates and fails lookups with a typed error."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[K, V] = {}

    def add(self, key: K, value: V) -> V:
        if key in self._entries:
            raise DuplicateEntryError(f"{self.kind} {key!r} is already registered")
        self._entries[key] = value
        return value

    def register(self, key: K) -> Callable[[V], V]:
        """Decorator form of :meth:`add`."""

        def decorator(value: V) -> V:
            return self.add(key, value)

        return decorator

    def get(self, key: K) -> V:
        try:
            return self._entries[key]
        except KeyError:
            known = ", ".join(sorted(str(k) for k in self._entries)) or "none"
            raise UnknownEntryError(f"unknown {self.kind} {key!r}; known: {known}") from None

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[K]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self) -> list[tuple[K, V]]:
        return list(self._entries.items())

    def values(self) -> list[V]:
        return list(self._entries.values())
