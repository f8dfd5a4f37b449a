"""Content-based routing: a model name (e.g. ``auto``) that picks the serving model from what the request asks.

    "content_routing": [{"name": "auto", "default": "qwen",
                         "rules": [{"model": "coder", "regex": "(?i)\\b(python|code|function)\\b"},
                                   {"model": "vision", "images": true},
                                   {"model": "tools-model", "tools": true},
                                   {"model": "big", "keywords": ["prove", "step by step"], "min_chars": 200}]}]

A rule matches when every condition it names holds: ``regex`` (searched in the last user message), ``keywords``
(any of them, case-insensitive, in the last user message), ``min_chars`` / ``max_chars`` (that message's length),
``tools`` (the request offers tools, or not), ``images`` (a message holds an image, or not). The first rule that
matches names the model (a model or an alias); none: ``default``. Rules are compiled once, at plugin start.
"""

from __future__ import annotations

import re

from proxywasm import ConfigError, Fields, record

from .fieldcheck import echo

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


@record
class Rule:
    model: str
    regex: Any  # compiled pattern or None
    keywords: tuple  # lower-cased
    min_chars: int
    max_chars: int  # 0: no maximum
    tools: bool | None
    images: bool | None


@record
class ContentRoute:
    name: str
    rules: tuple
    default: str


def parse(f: Fields, known: set[str]) -> dict[str, ContentRoute]:
    """``content_routing``: name -> ContentRoute; models and aliases must exist (``known``)."""
    out: dict[str, ContentRoute] = {}
    for r in f.objs("content_routing", []):
        name = r.str("name")
        if name in known or name in out:
            raise ConfigError(f"{r.path('name')}: {name!r} is already a model, alias or content route")
        default = r.str("default")
        if default not in known:
            raise ConfigError(f"{r.path('default')}: unknown model {default!r}")
        rules = []
        for rf in r.objs("rules", []):
            model = rf.str("model")
            if model not in known:
                raise ConfigError(f"{rf.path('model')}: unknown model {model!r}")
            pattern = rf.str("regex", "")
            try:
                regex = re.compile(pattern) if pattern else None
            except re.error as e:
                raise ConfigError(f"{rf.path('regex')}: invalid regular expression {echo(pattern)}: {e}") from None
            rule = Rule(model, regex, tuple(k.lower() for k in rf.str_list("keywords", [])),
                        rf.int("min_chars", 0, min=0, max=1 << 30), rf.int("max_chars", 0, min=0, max=1 << 30),
                        rf.bool("tools", None), rf.bool("images", None))
            if regex is None and not rule.keywords and not rule.min_chars and not rule.max_chars \
                    and rule.tools is None and rule.images is None:
                raise ConfigError(f"{rf.where}: needs a condition (regex, keywords, min_chars, max_chars, tools, "
                                  "images)")
            rules.append(rule)
            rf.done()
        out[name] = ContentRoute(name, tuple(rules), default)
        r.done()
    return out


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: the text ones
        return "\n".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _has_image(messages: list[Any]) -> bool:
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") in ("image_url", "input_image")
                                             for p in content):
            return True
    return False


def choose(route: ContentRoute, doc: Any) -> str:
    """The model (or alias) a request to ``route`` goes to."""
    messages = doc.get("messages")
    messages = messages if isinstance(messages, list) else []
    last = ""
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            last = _text(m.get("content"))
            break
    else:
        prompt = doc.get("prompt")
        last = prompt if isinstance(prompt, str) else ""
    lowered = None
    images = None
    tools = bool(doc.get("tools"))
    for rule in route.rules:
        if rule.tools is not None and rule.tools != tools:
            continue
        if rule.images is not None:
            if images is None:
                images = _has_image(messages)
            if rule.images != images:
                continue
        if len(last) < rule.min_chars or (rule.max_chars and len(last) > rule.max_chars):
            continue
        if rule.keywords:
            lowered = last.lower() if lowered is None else lowered
            if not any(k in lowered for k in rule.keywords):
                continue
        if rule.regex is not None and rule.regex.search(last) is None:
            continue
        return rule.model
    return route.default
