"""Prefix affinity learned from the picker's own routing: where did requests starting like this one go?

A model server with automatic prefix caching (vLLM's APC, SGLang's radix cache) skips the prefill of a
prompt's leading part it computed recently. The picker cannot see those caches, but it knows where it
sent every prompt: a pod that got a prompt holds its start, for a while.

A prompt is cut into **segments**: its JSON text as the client sent it (not decoded: reading a long
history costs no parsing), before each message's ``"role"`` key (chat; a client serialises the same
history the same way on every turn), else in blocks of ``BLOCK_CHARS`` bytes (completions, embeddings),
within its first ``prefix_chars`` bytes. Segment ``i``'s hash chains the model name and every segment up
to ``i``, so it names the whole prefix through ``i``, as vLLM's block hashes do. ``Prefixes`` maps each
hash to the endpoints (a bit each) the picker sent a prompt with that prefix to, least recently used
forgotten first (``MAX_ENTRIES``; a pod's cache is bounded too). A request's **credit** at an endpoint
is the share of its hashed bytes in the longest
prefix that endpoint was sent (of ``FULL_CREDIT_CHARS`` if the prompt is shorter: a short prompt has
little prefill to save): a multi-turn chat resending its history gets almost 1 at the pod that served its
previous turn, a shared system prompt a smaller share at every pod that had it.
"""

from __future__ import annotations

import json

from proxywasm.jsonscan import JsonObject

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_SEGMENTS = 64  # hashes per request: the per-request cost is bounded
BLOCK_CHARS = 1024  # segment size of a plain prompt (~256 tokens)
MAX_ENTRIES = 1 << 14  # remembered prefixes per picker and worker
FULL_CREDIT_CHARS = 4096  # a match this long (bytes, ~1k tokens) earns full credit: a short prompt has little to save


def prompt_json(doc: Any) -> bytes:
    """The request's prompt as JSON text: ``messages`` (else ``prompt``, else ``input``) as the client sent it
    (a lazily parsed body: nothing is decoded), or re-encoded when the gateway has already built the document."""
    if isinstance(doc, JsonObject):
        return doc.text("messages") or doc.text("prompt") or doc.text("input")
    value = doc.get("messages", doc.get("prompt", doc.get("input")))
    return b"" if value is None else json.dumps(value, separators=(",", ":")).encode("utf-8", "surrogatepass")


def chain(doc: Any, model: str, n: int) -> tuple[list[int], list[int]] | None:
    """(hash of each prefix through segment i, its end in bytes); None without a prompt.

    The segments cut the prompt's JSON text before each message's ``"role"`` key (a chat), else every
    ``BLOCK_CHARS`` bytes, within its first ``n`` bytes. Python's string hash (SipHash, in C) chains them: it
    differs between VMs (hash randomisation), as does each VM's table of where prefixes went."""
    raw = prompt_json(doc)[:n]
    if len(raw) < 3:  # "", [], ""
        return None
    cuts = []
    if raw[:1] == b"[":
        at = raw.find(b'"role"', raw.find(b'"role"') + 1)
        while at > 0 and len(cuts) < MAX_SEGMENTS - 1:
            cuts.append(at)
            at = raw.find(b'"role"', at + 6)
    if not cuts:
        cuts = list(range(BLOCK_CHARS, len(raw), BLOCK_CHARS))[: MAX_SEGMENTS - 1]
    cuts.append(len(raw))
    h, start, hashes = hash(model), 0, []
    for end in cuts:
        h = hash((h, raw[start:end]))
        hashes.append(h)
        start = end
    return hashes, cuts


class Prefixes:
    """prefix hash -> bit mask of the endpoints it was sent to (bounded, least recently used first out)."""

    def __init__(self, entries: int = MAX_ENTRIES) -> None:
        self.entries = entries
        self.table: dict[int, int] = {}

    def credit(self, hashes: list[int], ends: list[int], everyone: int = -1) -> dict[int, float]:
        """endpoint bit -> the longest prefix sent to that endpoint, as a share of the prompt (of
        ``FULL_CREDIT_CHARS`` for a shorter prompt). ``everyone``: the bits of all endpoints (stops the search
        once each has its longest prefix)."""
        table, out, seen = self.table, {}, 0
        total = max(ends[-1], FULL_CREDIT_CHARS)
        for i in range(len(hashes) - 1, -1, -1):
            mask = table.get(hashes[i], 0) & ~seen
            if mask:
                seen |= mask
                share = ends[i] / total
                while mask:
                    bit = mask & -mask
                    out[bit] = share
                    mask ^= bit
                if seen == everyone:
                    break
        return out

    def sent(self, hashes: list[int], bit: int) -> None:
        """A prompt with these prefixes went to the endpoint of ``bit``."""
        table = self.table
        for h in hashes:
            table[h] = table.pop(h, 0) | bit  # re-inserted: the most recently used
        while len(table) > self.entries:
            del table[next(iter(table))]
