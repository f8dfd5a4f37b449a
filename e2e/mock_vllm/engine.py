"""The engine load model: continuous batching on a pretend GPU, so TTFT and latency grow with load.

Off by default: requests are answered at once (only ``max_num_seqs`` slots and injected delays hold them). On
with ``--load-model`` / ``serve(model, load_model=True, ...)``; the knobs are ``EngineConfig``'s fields, as flags
(``--kv-capacity-tokens 16384``) or ``serve()`` keywords. Tokens are the mock's words (see ``generation``).

One engine thread runs steps (iterations), scheduling like vLLM's v1 scheduler at the start of each step:

1. every running request whose prompt is done decodes one token (``B`` such requests, 1 budget token each);
2. running requests still in prefill get the next chunk of their prompt, within ``max_num_batched_tokens``
   tokens per step (chunked prefill);
3. waiting requests are admitted first come, first served, while fewer than ``max_num_seqs`` run and budget is
   left:

   * KV cache: a request reserves ``prompt + output`` tokens. If that does not fit in ``kv_capacity_tokens`` beside
     the running requests' reservations, admission stops (the queue head waits; vLLM also stops scheduling at the
     first allocation failure). The mock never preempts; a request larger than the whole cache runs alone.
   * LoRA: ``model`` may name an adapter (``--lora-modules``). A request whose adapter is not in the running batch
     waits (and the ones behind it may go, as in vLLM) while the batch already uses ``max_loras`` distinct
     adapters. Admitting an adapter that is not resident (an LRU set of ``max_loras`` adapters) loads it.
   * prefix cache (``prefix_cache``), vLLM's automatic prefix caching: the prompt's words are cut into blocks of
     ``prefix_cache_block_tokens`` (vLLM's KV block, 16 tokens); a block is known by the hash of its words and of
     every block before it, so a block is reused only when the whole prompt up to its end matches. The leading
     blocks found in the cache are not prefilled again (one token always is, as in vLLM). A prompt's full blocks
     are cached when its prefill completes. The cache holds ``prefix_cache_tokens`` tokens of blocks (0: as many
     as the KV cache), least recently used evicted first: vLLM keeps a freed block's contents until the block is
     reused, so what it can hold is bounded by the KV cache.

Step duration, in ms::

    step = decode_ms_per_token * (1 + decode_batch_cost * max(B - 1, 0) + decode_kv_cost * u)
           + prefill_ms_per_1k_tokens * P / 1000 + lora_load_ms * L

with ``B`` decoding requests, ``P`` prompt tokens prefilled in the step, ``u`` the KV-cache usage at its start
(tokens held by running requests / ``kv_capacity_tokens``; a request holds its computed prompt plus its generated
tokens) and ``L`` adapters loaded. At the end of the step each decoding request has one more token, a request
whose last prompt chunk was in the step has its first token, and finished requests leave, freeing their KV. So:

* TTFT = queue wait + the steps until the prompt is prefilled, each as long as the whole batch's step;
* inter-token latency = the step, growing with the batch, KV use, other requests' prefill chunks and LoRA loads;
* decode throughput = ``B / step``: it rises with the batch but saturates (``B=1``: 1/d; ``B=8`` with
  ``decode_batch_cost=0.06``: 8/(1.42 d) = 5.6/d), like a memory-bound GPU: batching buys throughput while every
  request in the batch gets slower.

Metrics: ``vllm:num_requests_running`` = admitted requests, ``vllm:num_requests_waiting`` = the queue,
``vllm:kv_cache_usage_perc`` = ``vllm:gpu_cache_usage_perc`` = ``u``, ``vllm:lora_requests_info`` (see
``metrics``), ``vllm:time_per_output_token_seconds`` (each decoded token observes its step's duration),
``vllm:prefix_cache_queries_total`` / ``vllm:prefix_cache_hits_total`` (tokens, with the prefix cache). ``GET /mock/engine`` shows the config, the state and step statistics, among them how late the steps ran
(``lag_ms``: the host CPU, not the model, when it is large).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from .metrics import DEFAULT_MAX_NUM_SEQS

if TYPE_CHECKING:
    from .metrics import Metrics


@dataclass(frozen=True)
class EngineConfig:
    """The load model's knobs; each is also a CLI flag (``max_num_seqs`` -> ``--max-num-seqs``)."""

    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS
    max_num_batched_tokens: int = 2048
    kv_capacity_tokens: int = 16384
    prefill_ms_per_1k_tokens: float = 20.0
    decode_ms_per_token: float = 10.0
    decode_batch_cost: float = 0.06
    decode_kv_cost: float = 0.5
    max_loras: int = 1
    lora_load_ms: float = 50.0
    prefix_cache: bool = False
    prefix_cache_block_tokens: int = 16
    prefix_cache_tokens: int = 0

    HELP = {
        "max_num_seqs": "requests running at once (the rest wait)",
        "max_num_batched_tokens": "load model: token budget per step (decode tokens + prefill chunks)",
        "kv_capacity_tokens": "load model: KV cache size in tokens",
        "prefill_ms_per_1k_tokens": "load model: prefill time per 1000 prompt tokens",
        "decode_ms_per_token": "load model: step time of a batch of one decoding request",
        "decode_batch_cost": "load model: step time added per extra request in the batch (x decode_ms_per_token)",
        "decode_kv_cost": "load model: step time added at a full KV cache (x decode_ms_per_token)",
        "max_loras": "LoRA adapters in one batch / resident at once",
        "lora_load_ms": "load model: time to load a non-resident adapter",
        "prefix_cache": "load model: automatic prefix caching (skip prefill of cached leading blocks)",
        "prefix_cache_block_tokens": "load model: tokens per cached block",
        "prefix_cache_tokens": "load model: tokens the prefix cache holds (0: kv_capacity_tokens)",
    }

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "bool":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{f.name} must be a number >= 0, got {value!r}")
        for name in ("max_num_seqs", "max_loras", "kv_capacity_tokens", "prefix_cache_block_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError("max_num_batched_tokens must be >= max_num_seqs (as in vLLM)")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def step_ms(cfg: EngineConfig, decoding: int, prefill_tokens: int, kv_usage: float, lora_loads: int = 0) -> float:
    """How long one engine step takes (the formula in the module docstring); 0 for an empty step."""
    if decoding <= 0 and prefill_tokens <= 0:
        return 0.0
    decode = cfg.decode_ms_per_token * (1 + cfg.decode_batch_cost * max(decoding - 1, 0)
                                        + cfg.decode_kv_cost * kv_usage)
    return decode + cfg.prefill_ms_per_1k_tokens * prefill_tokens / 1000 + cfg.lora_load_ms * lora_loads


def decode_tokens_per_s(cfg: EngineConfig, batch: int, kv_usage: float = 0.0) -> float:
    """Steady-state decode throughput of a batch of ``batch`` requests (no prefill in the steps)."""
    return 1000 * batch / step_ms(cfg, batch, 0, kv_usage) if batch > 0 else 0.0


class PrefixCache:
    """vLLM-style automatic prefix caching over blocks of words, bounded, least recently used evicted first."""

    def __init__(self, block_tokens: int, capacity_tokens: int) -> None:
        self.block = block_tokens
        self.max_blocks = max(1, capacity_tokens // block_tokens)
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def _hashes(self, text: str) -> list[int]:
        """The chained hash of each full block of ``text``'s words."""
        words = text.split()
        out, h, b = [], 0, self.block
        for i in range(0, len(words) - b + 1, b):
            h = hash((h, *words[i : i + b]))
            out.append(h)
        return out

    def cached_tokens(self, text: str, prompt_tokens: int) -> int:
        """Tokens of ``text``'s leading blocks held in the cache (at most ``prompt_tokens - 1``)."""
        n = 0
        for h in self._hashes(text):
            if h not in self._blocks:
                break
            self._blocks.move_to_end(h)
            n += 1
        return max(0, min(n * self.block, prompt_tokens - 1))

    def insert(self, text: str) -> None:
        for h in self._hashes(text):
            self._blocks[h] = None
            self._blocks.move_to_end(h)
        while len(self._blocks) > self.max_blocks:
            self._blocks.popitem(last=False)

    @property
    def blocks(self) -> int:
        return len(self._blocks)


class Ticket:
    """One request inside the engine; its handler waits on it for tokens."""

    coalesce = True  # the handler may write every token that is ready in one go

    def __init__(self, lock: threading.RLock, prompt_tokens: int, output_tokens: int, adapter: str | None,
                 prompt_text: str) -> None:
        self.cond = threading.Condition(lock)
        self.prompt_tokens = prompt_tokens
        self.output_tokens = max(1, output_tokens)
        self.adapter = adapter
        self.prompt_text = prompt_text
        self.prefill_left = 0
        self.reserved = 0
        self.generated = 0
        self.done = False

    def ready(self, n: int) -> bool:
        return self.generated >= n or self.done

    def wait(self, n: int) -> int:
        """Block until ``n`` tokens exist (or the request ended); return how many do."""
        with self.cond:
            while self.generated < n and not self.done:
                self.cond.wait()
            return self.generated


class _Instant:
    """The ticket of the load model being off: every token is there at once."""

    coalesce = False

    def ready(self, n: int) -> bool:
        return True

    def wait(self, n: int) -> int:
        return n


INSTANT = _Instant()


@dataclass
class _Step:
    decoding: list[Ticket]
    chunks: list[tuple[Ticket, int]]
    ms: float


class Engine:
    """The scheduler thread. Shares ``metrics.lock`` and keeps ``metrics``' gauges current."""

    def __init__(self, cfg: EngineConfig, metrics: Metrics, name: str = "engine", *, start: bool = True) -> None:
        """``start=False``: no thread; ``run_step()`` drives the engine (deterministic tests)."""
        self.cfg = cfg
        self.metrics = metrics
        self.lock = metrics.lock
        self._wake = threading.Condition(self.lock)
        self.waiting: list[Ticket] = []
        self.running: list[Ticket] = []
        self.reserved = 0
        self.resident: OrderedDict[str, None] = OrderedDict()  # LoRA adapters loaded, least recently used first
        self.prefix = (PrefixCache(cfg.prefix_cache_block_tokens, cfg.prefix_cache_tokens or cfg.kv_capacity_tokens)
                       if cfg.prefix_cache else None)
        self.stats = {"steps": 0, "step_ms": 0.0, "lag_ms": 0.0, "max_lag_ms": 0.0, "lora_loads": 0,
                      "admitted": 0, "finished": 0, "aborted": 0}
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name=f"mock-vllm-{name}-engine", daemon=True)
        if start:
            self._thread.start()

    # ---- called by request handlers

    def submit(self, prompt_tokens: int, output_tokens: int, adapter: str | None = None,
               prompt_text: str = "") -> Ticket:
        ticket = Ticket(self.lock, prompt_tokens, output_tokens, adapter, prompt_text)
        with self.lock:
            if self._stopped:
                ticket.done = True
                return ticket
            self.waiting.append(ticket)
            self._publish()
            self._wake.notify()
        return ticket

    def release(self, ticket: Ticket) -> None:
        """The handler is done with ``ticket``: if the engine still has it (client gone), abort it."""
        with self.lock:
            if ticket in self.waiting:
                self.waiting.remove(ticket)
            elif ticket in self.running:
                self.running.remove(ticket)
                self.reserved -= ticket.reserved
            else:
                return
            self.stats["aborted"] += 1
            ticket.done = True
            ticket.cond.notify_all()
            self._publish()

    def stop(self) -> None:
        with self.lock:
            self._stopped = True
            for t in self.waiting + self.running:
                t.done = True
                t.cond.notify_all()
            self.waiting.clear()
            self.running.clear()
            self.reserved = 0
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def doc(self) -> dict[str, Any]:
        with self.lock:
            steps = self.stats["steps"]
            return {"load_model": True, "config": self.cfg.to_json(), "running": len(self.running),
                    "waiting": len(self.waiting), "kv_usage": self._held() / self.cfg.kv_capacity_tokens,
                    "resident_loras": list(self.resident),
                    "stats": {**self.stats, "mean_lag_ms": self.stats["lag_ms"] / steps if steps else 0.0}}

    def run_step(self) -> float:
        """One step without sleeping (for tests of an engine made with ``start=False``); returns its duration."""
        with self.lock:
            step = self._schedule()
            self._advance(step, step.ms)
            return step.ms

    # ---- the engine thread

    def _loop(self) -> None:
        while True:
            with self.lock:
                while not self._stopped and not self.waiting and not self.running:
                    self._wake.wait()
                if self._stopped:
                    return
                step = self._schedule()
            if step.ms > 0:
                deadline = time.monotonic() + step.ms / 1000
                time.sleep(step.ms / 1000)
                lag = max(0.0, (time.monotonic() - deadline) * 1000)
            else:
                lag = 0.0
            with self.lock:
                if self._stopped:
                    return
                self._advance(step, step.ms + lag)
                self.stats["steps"] += 1
                self.stats["step_ms"] += step.ms
                self.stats["lag_ms"] += lag
                self.stats["max_lag_ms"] = max(self.stats["max_lag_ms"], lag)

    def _held(self) -> int:
        return sum(t.prompt_tokens - t.prefill_left + t.generated for t in self.running)

    def _schedule(self) -> _Step:
        cfg = self.cfg
        decoding = [t for t in self.running if t.prefill_left == 0]
        budget = cfg.max_num_batched_tokens - len(decoding)
        usage = self._held() / cfg.kv_capacity_tokens
        chunks: list[tuple[Ticket, int]] = []
        for t in self.running:
            if t.prefill_left and budget > 0:
                chunks.append((t, min(t.prefill_left, budget)))
                budget -= chunks[-1][1]
        active = {t.adapter for t in self.running if t.adapter}
        loads, i = 0, 0
        while i < len(self.waiting) and len(self.running) < cfg.max_num_seqs and budget > 0:
            t = self.waiting[i]
            if t.adapter and t.adapter not in active and len(active) >= cfg.max_loras:
                i += 1  # its adapter can't join this batch: let the ones behind it go
                continue
            need = t.prompt_tokens + t.output_tokens
            if self.running and self.reserved + need > cfg.kv_capacity_tokens:
                break
            del self.waiting[i]
            t.reserved = need
            self.reserved += need
            self.running.append(t)
            self.stats["admitted"] += 1
            cached = self.prefix.cached_tokens(t.prompt_text, t.prompt_tokens) if self.prefix else 0
            if self.prefix:
                self.metrics.prefix_queries += t.prompt_tokens
                self.metrics.prefix_hits += cached
            t.prefill_left = max(1, t.prompt_tokens - cached)
            if t.adapter:
                active.add(t.adapter)
                loads += self._load(t.adapter, active)
            chunks.append((t, min(t.prefill_left, budget)))
            budget -= chunks[-1][1]
        self._publish()
        return _Step(decoding, chunks, step_ms(cfg, len(decoding), sum(c for _, c in chunks), usage, loads))

    def _load(self, adapter: str, active: set[str]) -> int:
        """Make ``adapter`` resident; 1 if that took a load."""
        if adapter in self.resident:
            self.resident.move_to_end(adapter)
            return 0
        if len(self.resident) >= self.cfg.max_loras:
            victim = next(a for a in self.resident if a not in active)
            del self.resident[victim]
        self.resident[adapter] = None
        self.stats["lora_loads"] += 1
        return 1

    def _advance(self, step: _Step, took_ms: float) -> None:
        moved: list[Ticket] = []
        for t in step.decoding:
            if not t.done:
                t.generated += 1
                moved.append(t)
        if moved:  # each decoded token came one step after the previous one
            self.metrics.tpot.observe(took_ms / 1000, len(moved))
        for t, chunk in step.chunks:
            if t.done:
                continue
            t.prefill_left -= chunk
            if t.prefill_left == 0:
                t.generated += 1
                moved.append(t)
                if self.prefix:
                    self.prefix.insert(t.prompt_text)
        for t in [t for t in self.running if t.generated >= t.output_tokens]:
            self.running.remove(t)
            self.reserved -= t.reserved
            t.done = True
            self.stats["finished"] += 1
        for t in moved:
            t.cond.notify_all()
        self._publish()

    def _publish(self) -> None:
        m = self.metrics
        m.running, m.waiting = len(self.running), len(self.waiting)
        m.kv_usage = min(1.0, self._held() / self.cfg.kv_capacity_tokens)
        m.set_lora([t.adapter for t in self.running if t.adapter], [t.adapter for t in self.waiting if t.adapter])
