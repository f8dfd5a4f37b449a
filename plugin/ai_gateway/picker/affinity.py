"""Prefix affinity learned from the picker's own routing: where did requests starting like this one go?

A model server with automatic prefix caching (vLLM's APC, SGLang's radix cache) skips the prefill of a
prompt's leading part it computed recently. The picker cannot see those caches, but it knows where it
sent every prompt: a pod that got a prompt holds its start, for a while.

A prompt is cut into **segments** (chat: one per message, ``role:content``; completions and embeddings:
blocks of ``BLOCK_CHARS`` characters), within its first ``prefix_chars`` characters. Segment ``i``'s hash
chains the model name and every segment up to ``i`` (crc32), so it names the whole prefix through ``i``,
as vLLM's block hashes do. ``Prefixes`` maps each hash to the endpoints (a bit each) the picker sent a
prompt with that prefix to, least recently used forgotten first (``MAX_ENTRIES``; a pod's cache is
bounded too). A request's **credit** at an endpoint is the share of its hashed characters in the longest
prefix that endpoint was sent (of ``FULL_CREDIT_CHARS`` if the prompt is shorter: a short prompt has
little prefill to save): a multi-turn chat resending its history gets almost 1 at the pod that served its
previous turn, a shared system prompt a smaller share at every pod that had it.
"""

from __future__ import annotations

from binascii import crc32

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_PARTS = 256  # messages (or prompt list items) looked at
MAX_SEGMENTS = 64  # hashes per request: the per-request cost is bounded
BLOCK_CHARS = 1024  # segment size of a plain prompt (~256 tokens)
MAX_ENTRIES = 1 << 14  # remembered prefixes per pool and worker
FULL_CREDIT_CHARS = 4096  # a match this long (~1k tokens) earns full credit: a short prompt has little to save


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # chat content parts: the text ones
        return " ".join(p["text"] for p in content[:MAX_PARTS]
                        if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def segments(doc: dict[str, Any], n: int) -> list[str]:
    """The prompt's first ``n`` characters, cut into segments ([] if it has no prompt)."""
    messages = doc.get("messages")
    out: list[str] = []
    if isinstance(messages, list):
        size = 0
        for m in messages[:MAX_PARTS]:
            if not isinstance(m, dict):
                continue
            role = m.get("role")
            part = f"{role if isinstance(role, str) else ''}:{_text(m.get('content'))}\n"
            if size + len(part) >= n:
                out.append(part[: n - size])
                break
            out.append(part)
            size += len(part)
        return out[:MAX_SEGMENTS]
    prompt = doc.get("prompt", doc.get("input"))
    if isinstance(prompt, list):  # a batch of prompts, or token ids
        prompt = " ".join(str(p) if not isinstance(p, str) else p for p in prompt[:MAX_PARTS])
    if not isinstance(prompt, str) or not prompt:
        return out
    prompt = prompt[: min(n, BLOCK_CHARS * MAX_SEGMENTS)]
    return [prompt[i : i + BLOCK_CHARS] for i in range(0, len(prompt), BLOCK_CHARS)]


def chain(doc: dict[str, Any], model: str, n: int) -> tuple[list[int], list[int]] | None:
    """(hash of each prefix through segment i, its length in characters); None without a prompt."""
    parts = segments(doc, n)
    if not parts:
        return None
    h = crc32(model.encode("utf-8", "surrogatepass"))
    hashes, ends, size = [], [], 0
    for p in parts:
        h = crc32(p.encode("utf-8", "surrogatepass"), h)
        size += len(p)
        hashes.append(h)
        ends.append(size)
    return hashes, ends


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
