"""Typed reading of JSON plugin configuration, with errors that name the field."""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself is not imported at VM start
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_MISSING: Any = object()


class ConfigError(ValueError):
    """Invalid plugin configuration; the message names the field."""


class Fields:
    """A JSON object being read into a typed config. Unknown keys are errors (typos fail fast)."""

    def __init__(self, doc: Any, where: str = "") -> None:
        if not isinstance(doc, dict):
            raise ConfigError(f"{where or 'configuration'}: must be an object")
        self.doc = doc
        self.where = where
        self.seen: set[str] = set()

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def _get(self, key: str, default: Any, check: Callable[[Any], bool], what: str) -> Any:
        self.seen.add(key)
        if key not in self.doc or self.doc[key] is None:
            if default is _MISSING:
                raise ConfigError(f"{self.path(key)}: required")
            return default
        value = self.doc[key]
        if not check(value):
            raise ConfigError(f"{self.path(key)}: must be {what}, got {json_type(value)}")
        return value

    def str(self, key: str, default: Any = _MISSING, nonempty: bool = True) -> Any:
        v = self._get(key, default, lambda v: isinstance(v, str), "a string")
        if nonempty and v == "" and default is _MISSING:
            raise ConfigError(f"{self.path(key)}: must not be empty")
        return v

    def int(self, key: str, default: Any = _MISSING, min: int | None = None, max: int | None = None) -> Any:
        v = self._get(key, default, lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer")
        if v is not None and ((min is not None and v < min) or (max is not None and v > max)):
            raise ConfigError(f"{self.path(key)}: must be between {min} and {max}, got {v}")
        return v

    def number(self, key: str, default: Any = _MISSING, min: float | None = None, max: float | None = None) -> Any:
        v = self._get(key, default, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number")
        if v is not None and ((min is not None and v < min) or (max is not None and v > max)):
            raise ConfigError(f"{self.path(key)}: must be between {min} and {max}, got {v}")
        return v

    def bool(self, key: str, default: Any = _MISSING) -> Any:
        return self._get(key, default, lambda v: isinstance(v, bool), "true or false")

    def str_list(self, key: str, default: Any = _MISSING) -> Any:
        v = self._get(key, default, lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
                      "a list of strings")
        return tuple(v) if isinstance(v, list) else v

    def choice(self, key: str, choices: tuple[str, ...], default: Any = _MISSING) -> Any:
        v = self.str(key, default)
        if v is not None and v not in choices:
            raise ConfigError(f"{self.path(key)}: must be one of {', '.join(choices)}, got {v!r}")
        return v

    def obj(self, key: str, default: Any = _MISSING) -> Fields | None:
        v = self._get(key, default, lambda v: isinstance(v, dict), "an object")
        return None if v is None else Fields(v, self.path(key))

    def objs(self, key: str, default: Any = _MISSING) -> list[Fields]:
        v = self._get(key, default, lambda v: isinstance(v, list) and all(isinstance(i, dict) for i in v),
                      "a list of objects")
        return [Fields(item, f"{self.path(key)}[{i}]") for i, item in enumerate(v or [])]

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        return self._get(key, default, lambda v: True, "")

    def done(self) -> None:
        """Reject keys that were never read."""
        unknown = sorted(set(self.doc) - self.seen)
        if unknown:
            raise ConfigError(f"{self.path(unknown[0])}: unknown field")


def json_type(v: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "object", type(None): "null"}.get(type(v), type(v).__name__)
