"""Higress-style ``_rules_``: per route / domain / service overrides of the global config.

A rule is an object with one or more matchers and its own config keys::

    {"_rules_": [{"_match_route_": ["chat"], "timeout": 5},
                 {"_match_domain_": ["*.example.com"], "timeout": 9}], "timeout": 1}

Matchers in one rule must all match; the first matching rule wins, else the
global config applies. With rules but an empty global part, unmatched streams get
``None`` (the plugin is off for them), as in Higress.
"""

from __future__ import annotations

from . import hostcalls as hc
from .abi import MapType
from .properties import cluster_name, route_name
from .record import record

TYPE_CHECKING = False  # typing itself is not imported at VM start
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

MATCHERS = ("_match_route_", "_match_domain_", "_match_service_", "_match_route_prefix_")


def _str_list(rule: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = rule.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{where}.{key}: must be a non-empty list of non-empty strings")
    return tuple(value)


def domain_matches(pattern: str, host: str) -> bool:
    pattern, host = pattern.lower(), host.lower()
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def service_matches(pattern: str, cluster: str) -> bool:
    """Match an Istio/Higress cluster name (``outbound|port||host``) or a plain cluster name."""
    if cluster == pattern:
        return True
    parts = cluster.split("|")
    if len(parts) != 4:
        return False
    port, host = parts[1], parts[3]
    name, _, want_port = pattern.partition(":")
    return domain_matches(name, host) and (not want_port or want_port == port)


def _host() -> str:
    authority = hc.get_header_map_value(MapType.REQUEST_HEADERS, ":authority") or ""
    if authority.startswith("["):  # IPv6 literal
        return authority.split("]")[0] + "]"
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


@record
class Rule:
    routes: tuple[str, ...]
    domains: tuple[str, ...]
    services: tuple[str, ...]
    route_prefixes: tuple[str, ...]
    config: Any

    def matches(self, facts: dict[str, str]) -> bool:
        def fact(key: str, read: Callable[[], str]) -> str:
            if key not in facts:
                facts[key] = read()
            return facts[key]

        if self.routes and fact("route", route_name) not in self.routes:
            return False
        if self.route_prefixes and not fact("route", route_name).startswith(self.route_prefixes):
            return False
        if self.domains and not any(domain_matches(d, fact("host", _host)) for d in self.domains):
            return False
        cluster = fact("cluster", cluster_name) if self.services else ""
        return not self.services or any(service_matches(s, cluster) for s in self.services)


@record
class RuleSet:
    global_config: Any
    rules: tuple[Rule, ...]

    @classmethod
    def parse(cls, doc: dict[str, Any], parse: Callable[[dict[str, Any]], Any]) -> RuleSet:
        doc = dict(doc)
        raw_rules = doc.pop("_rules_", [])
        if not isinstance(raw_rules, list):
            raise ValueError("_rules_: must be a list")
        rules = []
        for i, raw in enumerate(raw_rules):
            where = f"_rules_[{i}]"
            if not isinstance(raw, dict):
                raise ValueError(f"{where}: must be an object")
            matchers = {k: _str_list(raw, k, where) for k in MATCHERS}
            if not any(matchers.values()):
                raise ValueError(f"{where}: needs one of {', '.join(MATCHERS)}")
            body = {k: v for k, v in raw.items() if k not in MATCHERS}
            try:
                config = parse(body)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
            rules.append(Rule(*matchers.values(), config=config))
        global_config = parse(doc) if doc or not rules else None
        return cls(global_config, tuple(rules))

    def select(self) -> Any:
        if not self.rules:
            return self.global_config
        facts: dict[str, str] = {}
        for rule in self.rules:
            if rule.matches(facts):
                return rule.config
        return self.global_config
