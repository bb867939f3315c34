"""Name → class tables for the parts a user picks by name (heads with --method, backbones with --arch)."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from hmic.errors import HmicError

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """The registered classes of one kind, in registration order. ``register(name)`` is the class
    decorator; ``lookup(name)`` returns a class or raises an HmicError naming the option and the choices."""

    def __init__(self, option: str):
        self.option = option
        self._classes: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(cls: T) -> T:
            cls.registered_name = name
            self._classes[name] = cls
            return cls

        return deco

    def unregister(self, name: str) -> None:
        del self._classes[name]

    def lookup(self, name: str) -> T:
        if name not in self._classes:
            raise HmicError(f"{self.option} {name!r} is unknown; choose one of {', '.join(self._classes)}")
        return self._classes[name]

    def names(self) -> list[str]:
        return list(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def describe(self) -> str:
        """``name: first docstring line`` for each entry, in registration order (an option's help)."""
        return "; ".join(f"{name}: {(cls.__doc__ or '').strip().splitlines()[0].rstrip('.')}" for name, cls in self._classes.items())
