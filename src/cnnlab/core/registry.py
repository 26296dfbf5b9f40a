"""A small name -> constructor registry in the style of timm's `register_model`.

Adding a component is one class and one decorator; callers look it up by name or alias.
An entry registered with `extra=True` can be built and listed like any other but is left
out of `default_names()`, the set a command runs when the user names none: a block kept for
a side comparison must not change what the default comparison (and its tables) contain.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}
        self._aliases: dict[str, str] = {}
        self._extra: set[str] = set()

    def register(self, name: str, aliases: tuple[str, ...] = (), *, extra: bool = False) -> Callable:
        def decorator(obj: Callable) -> Callable:
            for key in (name, *aliases):
                if key in self._entries or key in self._aliases:
                    raise ValueError(f"{self.kind} name {key!r} is already registered")
            self._entries[name] = obj
            for alias in aliases:
                self._aliases[alias] = name
            if extra:
                self._extra.add(name)
            obj.registry_name = name
            obj.registry_aliases = tuple(aliases)
            return obj

        return decorator

    def canonical(self, name: str) -> str:
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        valid = ", ".join(f"{n} ({'/'.join(self._entry_aliases(n))})" if self._entry_aliases(n) else n
                          for n in self._entries)
        raise KeyError(f"unknown {self.kind} {name!r}; valid names: {valid}")

    def _entry_aliases(self, name: str) -> list[str]:
        return [a for a, n in self._aliases.items() if n == name]

    def get(self, name: str) -> Callable[..., Any]:
        return self._entries[self.canonical(name)]

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        """Every registered name: the defaults in registration order, then the extras."""
        return self.default_names() + [n for n in self._entries if n in self._extra]

    def default_names(self) -> list[str]:
        """The names registered without `extra=True`, in registration order."""
        return [n for n in self._entries if n not in self._extra]

    def is_extra(self, name: str) -> bool:
        return self.canonical(name) in self._extra

    def aliases(self, name: str) -> list[str]:
        return self._entry_aliases(self.canonical(name))

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
