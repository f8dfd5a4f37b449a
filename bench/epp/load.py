"""Open-loop load for bench/epp: seeded workloads, Poisson arrivals, an asyncio streaming client, statistics.

Workloads (``WORKLOADS``): ``mixed`` (short chats, long prompts, long answers, some adapters), ``burst`` (mixed, the
rate doubling for a few seconds), ``uneven`` (mixed traffic; the pods differ, see run.py), ``chat`` (multi-turn
sessions resending their growing history after one of a few long system prompts) and ``lora`` (most requests name
one of many adapters, popular ones more often).

The same seed gives every system the same request sequence (arrival times, models, prompts, max_tokens).
TTFT and end-to-end latency count from each request's *scheduled* arrival (no coordinated omission): TTFT ends at
the first byte of generated content (the first SSE event with a non-empty ``delta.content``), end-to-end at the end
of the stream (``data: [DONE]``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

BASE_MODEL = "llama"
ADAPTERS = ("sql-lora", "code-lora", "chat-lora", "summ-lora")
VOCAB = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec "
         "romeo sierra tango uniform victor whiskey xray yankee zulu").split()
# (requests in every 8, user prompt words, max_tokens): mostly short chats, a tail of long prompts and long answers
CLASSES = {"short": (6, (50, 400), (16, 64)),
           "long_prompt": (1, (1500, 3000), (16, 64)),
           "long_output": (1, (50, 300), (200, 400))}
LORA_IN_10 = 3  # requests in every 10 that name an adapter
LORA_SHARE = LORA_IN_10 / 10
SYSTEM_PROMPTS = 4
SYSTEM_WORDS = 40
CONTENT = re.compile(rb'"delta":\{"content":"[^"]')
USAGE = re.compile(rb'"completion_tokens":(\d+)')


@dataclass
class Spec:
    at: float  # arrival, seconds from the start of the run
    model: str
    kind: str
    prompt_words: int
    max_tokens: int
    measured: bool  # False during warm-up
    body: bytes = field(repr=False, default=b"")


def workload(rate: float, seconds: float, warmup: float, seed: int) -> list[Spec]:
    """Poisson arrivals at ``rate`` req/s for ``warmup + seconds`` s; the first ``warmup`` s are not measured.

    Exactly ``round(rate * (warmup + seconds))`` requests: a Poisson process conditioned on its count (exponential
    gaps, scaled to fill the duration), so every seed offers the same number of requests. The request sequence and
    the gaps depend on ``seed`` only: at every rate the same requests come in the same order. Kinds and adapters are dealt from shuffled
    decks (every 8 requests hold each kind's count, every 10 hold 3 adapter requests), so the work offered per
    second varies little between seeds; sizes are uniform within each kind's ranges."""
    rnd, gaps = random.Random(f"{seed}:requests"), random.Random(f"{seed}:arrivals")
    systems = [" ".join(rnd.choice(VOCAB) for _ in range(SYSTEM_WORDS)) for _ in range(SYSTEM_PROMPTS)]
    kinds = _deck(rnd, [k for k, v in CLASSES.items() for _ in range(v[0])])
    lora = _deck(rnd, [True] * LORA_IN_10 + [False] * (10 - LORA_IN_10))
    total = warmup + seconds
    n = max(1, round(rate * total))
    g = [gaps.expovariate(1) for _ in range(n + 1)]
    times = [x * total / sum(g) for x in itertools.accumulate(g[:n])]
    out: list[Spec] = []
    for t in times:
        kind = next(kinds)
        _, (w_lo, w_hi), (m_lo, m_hi) = CLASSES[kind]
        words, max_tokens = rnd.randint(w_lo, w_hi), rnd.randint(m_lo, m_hi)
        model = rnd.choice(ADAPTERS) if next(lora) else BASE_MODEL
        user = " ".join(rnd.choice(VOCAB) for _ in range(words))
        out.append(Spec(t, model, kind, words, max_tokens, t >= warmup,
                        body(model, rnd.choice(systems), user, max_tokens)))
    return out


def burst(rate: float, seconds: float, warmup: float, seed: int) -> list[Spec]:
    """``mixed`` plus as many requests again during ``BURST_S`` seconds (at most a third of the measured window) a
    third into the measured window: the rate doubles for a moment (the extra requests are the same kind of mix)."""
    base = workload(rate, seconds, warmup, seed)
    at = warmup + seconds / 3
    extra = workload(rate, min(BURST_S, seconds / 3), 0, seed + 1000)
    for s in extra:
        s.at, s.measured = at + s.at, True
    return sorted(base + extra, key=lambda s: s.at)


BURST_S = 4.0
CHAT_SYSTEMS = 4  # long system prompts shared by all sessions (one per "application")
CHAT_SYSTEM_WORDS = (1000, 1600)
CHAT_TURNS = (3, 8)  # turns per session
CHAT_GAP_S = (1.0, 4.0)  # from one turn's arrival to the next (open loop: not waiting for the answer)
CHAT_USER_WORDS = (20, 150)
CHAT_REPLY_WORDS = (60, 200)  # the assistant's earlier answers, resent in the history
CHAT_MAX_TOKENS = (20, 100)


def chat(rate: float, seconds: float, warmup: float, seed: int) -> list[Spec]:
    """Multi-turn sessions: each starts (Poisson) with one of ``CHAT_SYSTEMS`` system prompts and sends a turn every
    ``CHAT_GAP_S``, each turn resending the whole history (its earlier questions and answers) plus a new question:
    what vLLM's prefix cache is for. Sessions start at ``rate / mean turns`` per second from ``warmup`` seconds
    before the run (so the measured window holds sessions at every turn; a fixed number of them, their start times
    a conditioned Poisson process); turns falling after the run are dropped."""
    rnd, gaps = random.Random(f"{seed}:chat"), random.Random(f"{seed}:sessions")
    systems = [" ".join(rnd.choice(VOCAB) for _ in range(rnd.randint(*CHAT_SYSTEM_WORDS)))
               for _ in range(CHAT_SYSTEMS)]
    total = warmup + seconds
    mean_turns = (CHAT_TURNS[0] + CHAT_TURNS[1]) / 2
    n = max(1, round(rate / mean_turns * (total + warmup)))  # sessions: a fixed count, as in workload()
    g = [gaps.expovariate(1) for _ in range(n + 1)]
    starts = [x * (total + warmup) / sum(g) - warmup for x in itertools.accumulate(g[:n])]
    out: list[Spec] = []
    for t in starts:
        system = rnd.randrange(CHAT_SYSTEMS)
        msgs: list[dict[str, str]] = [{"role": "system", "content": systems[system]}]
        at = t
        for _ in range(rnd.randint(*CHAT_TURNS)):
            user = " ".join(rnd.choice(VOCAB) for _ in range(rnd.randint(*CHAT_USER_WORDS)))
            msgs.append({"role": "user", "content": user})
            max_tokens = rnd.randint(*CHAT_MAX_TOKENS)
            if 0 <= at < total:
                words = sum(len(m["content"].split()) for m in msgs)
                out.append(Spec(at, BASE_MODEL, f"turn{min(len(msgs) // 2, 4)}", words, max_tokens, at >= warmup,
                                chat_body(BASE_MODEL, msgs, max_tokens)))
            reply = " ".join(rnd.choice(VOCAB) for _ in range(rnd.randint(*CHAT_REPLY_WORDS)))
            msgs.append({"role": "assistant", "content": reply})
            at += rnd.uniform(*CHAT_GAP_S)
    return sorted(out, key=lambda s: s.at)


LORA_ADAPTERS = tuple(f"lora-{i}" for i in range(8))
LORA_WEIGHTS = tuple(1 / (i + 1) for i in range(len(LORA_ADAPTERS)))  # Zipf-like popularity
LORA_BASE_SHARE = 0.2


def lora(rate: float, seconds: float, warmup: float, seed: int) -> list[Spec]:
    """Short chats, 80% naming one of ``LORA_ADAPTERS`` (popular ones more often), Poisson arrivals."""
    rnd, gaps = random.Random(f"{seed}:lora"), random.Random(f"{seed}:lora-arrivals")
    total = warmup + seconds
    n = max(1, round(rate * total))
    g = [gaps.expovariate(1) for _ in range(n + 1)]
    times = [x * total / sum(g) for x in itertools.accumulate(g[:n])]
    out = []
    for t in times:
        model = BASE_MODEL if rnd.random() < LORA_BASE_SHARE else rnd.choices(LORA_ADAPTERS, LORA_WEIGHTS)[0]
        words, max_tokens = rnd.randint(50, 400), rnd.randint(16, 96)
        user = " ".join(rnd.choice(VOCAB) for _ in range(words))
        out.append(Spec(t, model, "short" if model == BASE_MODEL else "adapter", words, max_tokens, t >= warmup,
                        body(model, "you are a helpful assistant", user, max_tokens)))
    return out


WORKLOADS = {"mixed": workload, "burst": burst, "uneven": workload, "chat": chat, "lora": lora}
KINDS = {"mixed": tuple(CLASSES), "burst": tuple(CLASSES), "uneven": tuple(CLASSES),
         "chat": ("turn1", "turn2", "turn3", "turn4"), "lora": ("short", "adapter")}


def _deck(rnd: random.Random, cards: list[Any]) -> Iterator[Any]:
    while True:
        hand = list(cards)
        rnd.shuffle(hand)
        yield from hand


def body(model: str, system: str, user: str, max_tokens: int) -> bytes:
    return chat_body(model, [{"role": "system", "content": system}, {"role": "user", "content": user}], max_tokens)


def chat_body(model: str, messages: list[dict[str, str]], max_tokens: int) -> bytes:
    return json.dumps({"model": model, "messages": messages, "max_tokens": max_tokens, "ignore_eos": True,
                       "stream": True, "stream_options": {"include_usage": True}}).encode()


@dataclass
class Result:
    spec: Spec
    status: int = 0
    ttft: float | None = None
    e2e: float | None = None
    output_tokens: int = 0
    error: str | None = None
    end: float = 0.0  # monotonic

    @property
    def ok(self) -> bool:
        return self.error is None


async def one(host: str, port: int, spec: Spec, t0: float, timeout: float) -> Result:
    """Send ``spec`` at ``t0 + spec.at`` and read the SSE answer."""
    loop = asyncio.get_running_loop()
    delay = t0 + spec.at - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)
    due = t0 + spec.at
    r = Result(spec)
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
                         b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(spec.body), spec.body))
            head = await reader.readuntil(b"\r\n\r\n")
            r.status = int(head.split(b" ", 2)[1])
            buf = bytearray()
            while chunk := await reader.read(65536):
                start = max(0, len(buf) - 32)
                buf += chunk
                if r.ttft is None and CONTENT.search(buf, start):
                    r.ttft = loop.time() - due
            r.end = loop.time()
            r.e2e = r.end - due
        if r.status != 200:
            r.error = f"HTTP {r.status}: {bytes(buf[:160]).decode(errors='replace')}"
        elif b"data: [DONE]" not in buf:
            r.error = "stream ended without [DONE]"
        else:
            usages = USAGE.findall(buf)
            r.output_tokens = int(usages[-1]) if usages else 0
            if r.ttft is None:
                r.error = "no content"
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError) as e:
        r.error = f"{type(e).__name__}: {e}"
        r.end = loop.time()
    finally:
        if writer is not None:
            writer.close()
    return r


async def run(host: str, port: int, specs: list[Spec], timeout: float = 120.0) -> tuple[list[Result], float]:
    """Every request of ``specs`` at its time; returns the results and the monotonic start of the run."""
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.2
    results = await asyncio.gather(*(one(host, port, s, t0, timeout) for s in specs))
    return list(results), t0


def run_sync(host: str, port: int, specs: list[Spec], timeout: float = 120.0) -> tuple[list[Result], float, float]:
    """``run`` in a fresh event loop; also returns the client's own CPU seconds."""
    cpu0 = time.process_time()
    results, t0 = asyncio.run(run(host, port, specs, timeout))
    return results, t0, time.process_time() - cpu0


def quantile(values: list[float], q: float) -> float | None:
    """Nearest-rank quantile (``q`` in 0..1)."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(q * len(s) + 0.999999) - 1))]


def summarize(results: list[Result], t0: float, warmup: float, seconds: float,
              kinds: tuple[str, ...] = tuple(CLASSES)) -> dict[str, Any]:
    """Statistics over the measured requests (those arriving after the warm-up)."""
    measured = [r for r in results if r.spec.measured]
    ok = [r for r in measured if r.ok]
    start, stop = t0 + warmup, t0 + warmup + seconds
    # Throughput: answers completed inside the measured window (warm-up requests included), per second of it
    done = [r for r in results if r.ok and start <= r.end < stop]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    e2e = [r.e2e for r in ok if r.e2e is not None]
    out: dict[str, Any] = {
        "requests": len(measured), "ok": len(ok), "errors": len(measured) - len(ok),
        "req_per_s": len(done) / seconds, "output_tokens_per_s": sum(r.output_tokens for r in done) / seconds,
        "offered_req_per_s": len(measured) / seconds,
        "drain_s": max((r.end for r in ok), default=stop) - stop,
        "ttft_p50": quantile(ttft, 0.5), "ttft_p90": quantile(ttft, 0.9), "ttft_p99": quantile(ttft, 0.99),
        "ttft_mean": sum(ttft) / len(ttft) if ttft else None,
        "e2e_p50": quantile(e2e, 0.5), "e2e_p90": quantile(e2e, 0.9), "e2e_p99": quantile(e2e, 0.99),
        "ttft_p90_by_kind": {}, "ttft_p90_lora": quantile([r.ttft for r in ok if r.spec.model != BASE_MODEL
                                                           and r.ttft is not None], 0.9),
        "error_samples": sorted({r.error for r in measured if r.error})[:5],
    }
    for kind in kinds:
        out["ttft_p90_by_kind"][kind] = quantile([r.ttft for r in ok if r.spec.kind == kind and r.ttft is not None],
                                                 0.9)
    return out


def mix(specs: list[Spec]) -> dict[str, Any]:
    """What the workload holds (for the report)."""
    measured = [s for s in specs if s.measured]
    n = max(1, len(measured))
    return {"requests": len(measured), "warmup_requests": len(specs) - len(measured),
            "kinds": {k: sum(s.kind == k for s in measured) / n for k in sorted({s.kind for s in measured})},
            "lora_share": sum(s.model != BASE_MODEL for s in measured) / n,
            "mean_prompt_words": sum(sum(len(m["content"].split()) for m in json.loads(s.body)["messages"])
                                     for s in measured) / n,
            "mean_max_tokens": sum(s.max_tokens for s in measured) / n,
            "classes": {k: {"share": v[0] / 8, "user_words": v[1], "max_tokens": v[2]} for k, v in CLASSES.items()}}
