"""Checks for configuration values that end up in HTTP headers, paths or Envoy stat names.

Every parser of the gateway's configuration uses these, so a header name, a header value or a path is judged the
same way everywhere and a bad one fails plugin start with its field named. Values that may be secrets (API keys)
are never echoed in the error.
"""

from __future__ import annotations

from proxywasm import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from proxywasm import Fields

# RFC 9110 token characters (header names), lower case: Envoy stores header names lower-cased.
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")
# Headers of the connection or the message framing: never the gateway's to set or read as data.
FRAMING = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection", "trailer",
                     "host", "content-length", "content-type", "expect"})
MAX_ECHO = 64


def echo(value: str) -> str:
    """A config value quoted for an error message, capped."""
    return repr(value[:MAX_ECHO] + ("..." if len(value) > MAX_ECHO else ""))


def has_control(value: str) -> bool:
    """CR, LF, NUL or any other control character: not allowed in a header value or a path."""
    return any(c < " " or c == "\x7f" for c in value)


def header_name(f: Fields, key: str, default: str, optional: bool = False) -> str:
    """``f[key]`` as a lower-case HTTP header name; ``optional`` (or a default of "") lets "" mean none."""
    v = f.str(key, default, nonempty=False)
    name = v.lower()
    where = f.path(key)
    if not name:
        if optional or not default:
            return ""
        raise ConfigError(f"{where}: must not be empty")
    if name[0] == ":":
        raise ConfigError(f"{where}: must not be a pseudo-header, got {echo(v)}")
    if not set(name) <= _TCHAR:
        raise ConfigError(f"{where}: must be an HTTP header name (letters, digits and !#$%&'*+-.^_`|~), "
                          f"got {echo(v)}")
    if name in FRAMING:
        raise ConfigError(f"{where}: must not be {name!r} (a connection or framing header)")
    return name


def header_value(f: Fields, key: str, value: str, secret: bool = False) -> str:
    """``value`` (read from ``f[key]``) checked for use in a header: no control characters."""
    if has_control(value):
        shown = "" if secret else f", got {echo(value)}"
        raise ConfigError(f"{f.path(key)}: must not contain control characters (CR, LF, NUL, ...){shown}")
    return value


def token(f: Fields, key: str, default: str | None = None) -> str:
    """A non-empty value without spaces or control characters (cluster names, authorities)."""
    v = f.str(key) if default is None else f.str(key, default)
    if default is None or v:
        if not v or has_control(v) or " " in v:
            raise ConfigError(f"{f.path(key)}: must be non-empty, without spaces or control characters, got {echo(v)}")
    return v


def url_path(where: str, v: str) -> str:
    """An absolute request path without query, fragment, whitespace or control characters."""
    if not v.startswith("/") or has_control(v) or any(c in v for c in " ?#"):
        raise ConfigError(f"{where}: must be an absolute path such as /v1/models (no query, spaces or control "
                          f"characters), got {echo(v)}")
    return v
