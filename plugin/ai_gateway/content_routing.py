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

Optionally, when no rule matches, an intent classifier decides:
``"classifier": {"model": "small", "categories": {"code": "coder", "math": "big"}, "timeout_ms": 2000}``: the
gateway asks ``model`` (through its cluster, as a callout) which category the last user message belongs to; the
first category named in its answer picks the model. No answer within ``timeout_ms``, an error, or no category
named: ``default``.
"""

from __future__ import annotations

import json
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
class Classifier:
    model: str  # the model (a configured model, not an alias) asked for the category
    categories: dict  # category (lower case) -> model or alias
    timeout_ms: int
    max_chars: int  # of the user message sent to the classifier


@record
class ContentRoute:
    name: str
    rules: tuple
    default: str
    classifier: Classifier | None = None


def parse(f: Fields, models: set[str], known: set[str]) -> dict[str, ContentRoute]:
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
        out[name] = ContentRoute(name, tuple(rules), default, _classifier(r.obj("classifier", None), models, known))
        r.done()
    return out


def _classifier(f: Fields | None, models: set[str], known: set[str]) -> Classifier | None:
    if f is None:
        return None
    model = f.str("model")
    if model not in models:
        raise ConfigError(f"{f.path('model')}: unknown model {model!r} (a model, not an alias)")
    cats = f.raw("categories", None)
    if not isinstance(cats, dict) or not cats:
        raise ConfigError(f"{f.path('categories')}: must map categories to models, e.g. {{\"code\": \"coder\"}}")
    out = {}
    for cat, target in cats.items():
        if not isinstance(target, str) or target not in known:
            raise ConfigError(f"{f.path('categories')}.{cat}: unknown model {echo(str(target))}")
        if not cat.strip() or not cat.isascii():
            raise ConfigError(f"{f.path('categories')}: category names must be non-empty ASCII")
        out[cat.strip().lower()] = target
    c = Classifier(model, out, f.int("timeout_ms", 2000, min=50, max=30_000),
                   f.int("max_chars", 4000, min=100, max=100_000))
    f.done()
    return c


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: the text ones
        return "\n".join(t for p in content if isinstance(p, dict) and p.get("type") == "text"
                         and isinstance(t := p.get("text"), str))
    return ""


def _has_image(messages: list[Any]) -> bool:
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") in ("image_url", "input_image")
                                             for p in content):
            return True
    return False


def last_user_text(doc: Any) -> str:
    messages = doc.get("messages")
    for m in reversed(messages if isinstance(messages, list) else []):
        if isinstance(m, dict) and m.get("role") == "user":
            return _text(m.get("content"))
    prompt = doc.get("prompt")
    return prompt if isinstance(prompt, str) else ""


def classifier_request(c: Classifier, doc: Any) -> dict[str, Any]:
    """The chat request (a document) asking the classifier for the category of the last user message."""
    cats = ", ".join(c.categories)
    return {"model": c.model, "temperature": 0, "max_tokens": 16, "stream": False, "messages": [
        {"role": "system", "content": f"Classify the user's message into exactly one of these categories: {cats}. "
                                      "Answer with the category name only."},
        {"role": "user", "content": last_user_text(doc)[: c.max_chars]}]}


def classified(c: Classifier, status: int, body: bytes) -> str | None:
    """The model the classifier's answer picks, or None (error, unreadable, no category named)."""
    if status != 200:
        return None
    try:
        answer = json.loads(body)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError, RecursionError):  # RecursionError: absurdly deep JSON
        return None
    if not isinstance(answer, str):
        return None
    text = answer.lower()
    found = [(text.find(cat), cat) for cat in c.categories if cat in text]
    return c.categories[min(found)[1]] if found else None


def choose(route: ContentRoute, doc: Any) -> str | None:
    """The model (or alias) a request to ``route`` goes to; None: no rule matched and the classifier decides."""
    messages = doc.get("messages")
    messages = messages if isinstance(messages, list) else []
    last = last_user_text(doc)
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
    return route.default if route.classifier is None else None
