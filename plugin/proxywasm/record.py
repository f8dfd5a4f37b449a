"""``@record``: a light dataclass for plugin code.

``dataclasses`` imports ``inspect`` (and with it ``dis``, ``ast``, ``tokenize``),
which adds milliseconds to every VM start inside Envoy. Records get an
``__init__`` (positional or keyword, defaults from class attributes), ``__repr__``
and ``__eq__`` built from the class annotations, and are immutable by convention.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself is not imported at VM start
if TYPE_CHECKING:
    from typing import Any, TypeVar

    T = TypeVar("T")

_NO_DEFAULT = object()


def record(cls: type[T]) -> type[T]:
    fields = [n for n, ann in cls.__dict__.get("__annotations__", {}).items()  # noqa: RUF063 - no inspect at VM start
              if not str(ann).startswith("ClassVar")]
    defaults = {n: cls.__dict__.get(n, _NO_DEFAULT) for n in fields}
    for n in fields:  # defaults live on instances; mutable defaults are never shared
        if n in cls.__dict__:
            delattr(cls, n)

    names = frozenset(fields)
    count = len(fields)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        # Fast paths (records are made per request): every field given, all by position or all by name.
        if kwargs:
            if not args and len(kwargs) == count and kwargs.keys() == names:
                self.__dict__.update(kwargs)
                return
        elif len(args) == count:
            self.__dict__.update(zip(fields, args, strict=False))
            return
        if len(args) > len(fields):
            raise TypeError(f"{cls.__name__}() takes {len(fields)} arguments, got {len(args)}")
        values = dict(zip(fields, args, strict=False))
        for k, v in kwargs.items():
            if k not in defaults:
                raise TypeError(f"{cls.__name__}() got an unexpected argument {k!r}")
            if k in values:
                raise TypeError(f"{cls.__name__}() got {k!r} twice")
            values[k] = v
        for n in fields:
            if n not in values:
                d = defaults[n]
                if d is _NO_DEFAULT:
                    raise TypeError(f"{cls.__name__}() missing argument {n!r}")
                values[n] = d() if callable(d) and getattr(d, "__record_factory__", False) else d
            object.__setattr__(self, n, values[n])

    def __repr__(self: Any) -> str:
        return f"{cls.__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in fields)})"

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in fields)

    cls.__init__ = __init__  # type: ignore[misc]
    own = cls.__dict__
    if "__repr__" not in own:  # a class may hide fields (secrets) in its own repr
        cls.__repr__ = __repr__  # type: ignore[method-assign]
    if "__eq__" not in own:
        cls.__eq__ = __eq__  # type: ignore[method-assign]
        cls.__hash__ = None  # type: ignore[assignment]
    return cls


def factory(fn: Any) -> Any:
    """Mark a default as a factory called per instance, e.g. ``items: list = factory(list)``."""

    def make() -> Any:
        return fn()

    make.__record_factory__ = True  # type: ignore[attr-defined]
    return make
