"""A small name -> constructor registry in the style of timm's `register_model`.

Adding a component is one class and one decorator; callers look it up by name or alias.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, aliases: tuple[str, ...] = ()) -> Callable:
        def decorator(obj: Callable) -> Callable:
            for key in (name, *aliases):
                if key in self._entries or key in self._aliases:
                    raise ValueError(f"{self.kind} name {key!r} is already registered")
            self._entries[name] = obj
            for alias in aliases:
                self._aliases[alias] = name
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
        return list(self._entries)

    def aliases(self, name: str) -> list[str]:
        return self._entry_aliases(self.canonical(name))

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
