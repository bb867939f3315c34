"""Name → class tables for the parts a user picks by name (heads with --method, backbones with --arch)."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from .errors import HmicError

T = TypeVar("T", bound=type)


class Registry(dict, Generic[T]):
    """A dict of registered classes; ``register(name)`` is the class decorator, ``get`` the lookup that
    names the option and the choices when a name is unknown."""

    def __init__(self, option: str):
        super().__init__()
        self.option = option

    def register(self, name: str) -> Callable[[T], T]:
        def deco(cls: T) -> T:
            cls.registered_name = name
            self[name] = cls
            return cls

        return deco

    def get(self, name: str) -> T:  # type: ignore[override]
        if name not in self:
            raise HmicError(f"{self.option} {name!r} is unknown; choose one of {', '.join(self)}")
        return self[name]

    def describe(self) -> str:
        """``name: first docstring line`` for each entry, in registration order (an option's help)."""
        return "; ".join(f"{name}: {(cls.__doc__ or '').strip().splitlines()[0].rstrip('.')}" for name, cls in self.items())
