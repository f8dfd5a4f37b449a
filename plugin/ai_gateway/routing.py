"""Choosing the model that serves a request: direct names and weighted aliases."""

from __future__ import annotations

import random

from .config import Alias, Config, Model


def fnv1a(data: str) -> int:
    """32-bit FNV-1a: a stable hash for sticky assignment (same value, same target, every VM)."""
    h = 0x811C9DC5
    for b in data.encode("utf-8", "surrogateescape"):
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def pick_target(alias: Alias, sticky_value: str | None, rng: random.Random) -> str:
    """Weighted choice; with a sticky value the same value always maps to the same target."""
    point = (fnv1a(sticky_value) if sticky_value else rng.randrange(1 << 32)) % alias.total_weight
    for t in alias.targets:
        if point < t.weight:
            return t.model
        point -= t.weight
    return alias.targets[-1].model  # unreachable with positive total weight


def resolve(cfg: Config, requested: str, header: callable, rng: random.Random) -> Model | None:
    """The model serving ``requested`` (a model or an alias), or None if unknown.

    ``header(name)`` reads a request header (for sticky aliases).
    """
    model = cfg.models.get(requested)
    if model is not None:
        return model
    alias = cfg.aliases.get(requested)
    if alias is None:
        return None
    sticky = header(alias.sticky_header) if alias.sticky_header else None
    return cfg.models[pick_target(alias, sticky, rng)]
