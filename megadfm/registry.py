"""A named table of pluggable implementations, selected by a config value.

    LOSS_WEIGHTINGS = Registry("dfm.loss_weighting")

    @LOSS_WEIGHTINGS.register("kl")
    def kl(t, mask_ratio, scheduler): ...

    LOSS_WEIGHTINGS.get(cfg.loss_weighting)   # the function, or a RegistryError naming the field

A registry is named after the config field that selects from it, so an unknown value is reported
as that field's error. A config field declares ``doc(..., choices=REGISTRY)`` (megadfm/config_base.py):
its allowed values are then the registry's keys, not a hand-written ``Literal`` that could drift.
This module imports nothing heavy, so config modules can use it.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown or duplicate key; the message names the config field and the allowed values."""

    def __str__(self) -> str:  # KeyError would print the repr of its argument, quotes and all
        return str(self.args[0])


class Registry:
    """Keys (config values) to entries (functions or objects), in registration order."""

    def __init__(self, name: str):
        self.name = name
        self._entries: Dict[str, Any] = {}

    def register(self, key: str) -> Callable[[T], T]:
        """Decorator: register the decorated function or class under ``key`` and return it unchanged."""

        def add(entry: T) -> T:
            if key in self._entries:
                raise RegistryError(f"{self.name}: {key!r} is already registered (to {self._entries[key]!r})")
            self._entries[key] = entry
            return entry

        return add

    def unregister(self, key: str) -> None:
        """Remove ``key`` (tests that register a temporary entry clean up with this)."""
        self.get(key)
        del self._entries[key]

    def get(self, key: str) -> Any:
        if key not in self._entries:
            raise RegistryError(f"{self.name}: unknown value {key!r}; allowed values: {', '.join(self.keys())}")
        return self._entries[key]

    def keys(self) -> List[str]:
        return list(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.name!r}: {', '.join(self.keys())})"
