"""A small name -> object registry shared by the pluggable parts of lavise."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories or classes, so command-line choices come from code.

    Args:
        kind: What the registry holds, used in error messages ("model", "masking method").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``."""

        def wrap(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return wrap

    def get(self, name: str) -> T:
        """Returns the entry ``name`` or raises ValueError naming close valid choices."""
        try:
            return self._items[name]
        except KeyError:
            raise ValueError(unknown_choice(self.kind, name, self.names())) from None

    def names(self) -> list[str]:
        """All registered names, in registration order."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)


def unknown_choice(kind: str, name: str, valid: list[str], limit: int = 5) -> str:
    """A one-line message for an unknown ``name`` that lists the closest valid ones."""
    close = difflib.get_close_matches(name, valid, n=limit, cutoff=0.4)
    if not close:
        close = [v for v in valid if name.lower() in v.lower()][:limit]
    hint = f"closest: {', '.join(close)}" if close else f"valid: {', '.join(valid[:limit * 2])}"
    more = "" if close or len(valid) <= limit * 2 else ", ..."
    return f"unknown {kind} {name!r} ({hint}{more})"
