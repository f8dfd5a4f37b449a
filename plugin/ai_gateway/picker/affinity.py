"""Prefix affinity: requests whose prompts start alike go to the same endpoint (its prefix cache).

The first ``prefix_chars`` characters of the prompt (chat: ``role:content`` of each message in
order; completions: the prompt; embeddings: the input), with the model name, hash to 32 bits.
Each endpoint's share of that hash is a rendezvous (highest-random-weight) score: the endpoint
with the highest ``mix(hash ^ endpoint_id)`` among the candidates wins. No state is kept, every
worker agrees, and an endpoint leaving the candidates moves only the prefixes it had.
"""

from __future__ import annotations

from binascii import crc32

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_M64 = (1 << 64) - 1
MAX_PARTS = 256  # messages (or prompt list items) looked at


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # chat content parts: the text ones
        return " ".join(p["text"] for p in content[:MAX_PARTS]
                        if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def prompt_prefix(doc: dict[str, Any], n: int) -> str:
    """The first ``n`` characters of the request's prompt, "" if it has none."""
    messages = doc.get("messages")
    if isinstance(messages, list):
        parts, size = [], 0
        for m in messages[:MAX_PARTS]:
            if not isinstance(m, dict):
                continue
            role = m.get("role")
            part = f"{role if isinstance(role, str) else ''}:{_text(m.get('content'))}\n"
            parts.append(part)
            size += len(part)
            if size >= n:
                break
        return "".join(parts)[:n]
    prompt = doc.get("prompt", doc.get("input"))
    if isinstance(prompt, list):  # a batch of prompts, or token ids
        prompt = " ".join(str(p) if not isinstance(p, str) else p for p in prompt[:MAX_PARTS])
    return prompt[:n] if isinstance(prompt, str) else ""


def prefix_hash(doc: dict[str, Any], model: str, n: int) -> int | None:
    text = prompt_prefix(doc, n)
    if not text:
        return None
    return crc32(text.encode("utf-8", "surrogatepass"), crc32(model.encode("utf-8", "surrogatepass")))


def rendezvous(h: int, endpoint_id: int) -> int:
    """splitmix64's finaliser over the pair: a well-mixed 64-bit weight."""
    x = ((h * 0x9E3779B97F4A7C15) ^ endpoint_id) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)
