"""vLLM-style Prometheus metrics (``GET /metrics``) and the slot scheduler used when the load model is off."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

DEFAULT_MAX_NUM_SEQS = 8
LORA_SERIES_KEPT = 32
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
                80.0)  # vLLM's


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, n: int = 1) -> None:
        """``n`` observations of ``value``."""
        for i, le in enumerate(self.buckets):
            if value <= le:
                self.counts[i] += n
        self.sum += value * n
        self.count += n

    def render(self, name: str, help_text: str, labels: str) -> list[str]:
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        lines += [f'{name}_bucket{{{labels},le="{le}"}} {float(n)}' for le, n in zip(self.buckets, self.counts, strict=True)]
        lines += [f'{name}_bucket{{{labels},le="+Inf"}} {float(self.count)}',
                  f"{name}_count{{{labels}}} {float(self.count)}", f"{name}_sum{{{labels}}} {self.sum!r}"]
        return lines


class Metrics:
    """Engine-side counters and gauges. ``slot()`` is the scheduler when the load model is off: a request waits
    until one of ``max_num_seqs`` slots is free. With the load model on, ``engine.Engine`` keeps the gauges."""

    def __init__(self, model: str, max_num_seqs: int, *, max_loras: int = 1, lora: bool = False,
                 prefix_cache: bool = False) -> None:
        self.model = model
        self.max_num_seqs = max_num_seqs
        self.max_loras = max_loras
        self.lora = lora
        self.prefix_cache = prefix_cache
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.running = 0
        self.waiting = 0
        self.kv_usage: float | None = None  # None: running / max_num_seqs (the load model sets it)
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.success = {"stop": 0, "length": 0, "abort": 0}
        self.ttft = Histogram(TTFT_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)
        self.tpot = Histogram(TPOT_BUCKETS)  # time per output token after the first (the load model's steps)
        self.started = time.time()
        self._lora_now = ("", "")
        self._lora_series: dict[tuple[str, str], float] = {}  # earlier label values -> when they were last current
        self._slot_adapters: dict[str, list[str]] = {"running": [], "waiting": []}

    @contextlib.contextmanager
    def slot(self, adapter: str | None = None) -> Iterator[None]:
        with self.cond:
            self.waiting += 1
            self._slot_lora("waiting", adapter, +1)
            try:
                while self.running >= self.max_num_seqs:
                    self.cond.wait()
            finally:
                self.waiting -= 1
                self._slot_lora("waiting", adapter, -1)
            self.running += 1
            self._slot_lora("running", adapter, +1)
        try:
            yield
        finally:
            with self.cond:
                self.running -= 1
                self._slot_lora("running", adapter, -1)
                self.cond.notify()

    def _slot_lora(self, where: str, adapter: str | None, delta: int) -> None:
        if adapter is None:
            return
        names = self._slot_adapters[where]
        if delta > 0:
            names.append(adapter)
        else:
            names.remove(adapter)
        self.set_lora(self._slot_adapters["running"], self._slot_adapters["waiting"])

    def set_lora(self, running: list[str], waiting: list[str]) -> None:
        """The adapters of running and waiting requests now (repeats allowed; vLLM lists each once)."""
        now = (",".join(dict.fromkeys(running)), ",".join(dict.fromkeys(waiting)))
        with self.lock:
            if now != self._lora_now:
                self._lora_series[self._lora_now] = time.time()
                self._lora_series.pop(now, None)
                self._lora_now = now
                while len(self._lora_series) > LORA_SERIES_KEPT:
                    del self._lora_series[next(iter(self._lora_series))]

    def _lora_lines(self) -> list[str]:
        """``vllm:lora_requests_info``: like prometheus_client in vLLM, every label set ever set stays, its value the
        time it was last set; the current one is set on every engine step (here: its value is now). Scrapers take
        the series with the largest value. Without LoRA, one constant series as before."""
        def line(key: tuple[str, str], value: float) -> str:
            return (f'vllm:lora_requests_info{{max_lora="{self.max_loras}",running_lora_adapters="{key[0]}",'
                    f'waiting_lora_adapters="{key[1]}"}} {value!r}')
        if not self.lora:
            return [line(("", ""), self.started)]
        return [line(k, v) for k, v in self._lora_series.items()] + [line(self._lora_now, time.time())]

    def first_token(self, seconds: float) -> None:
        with self.cond:
            self.ttft.observe(seconds)

    def finished(self, reason: str, prompt_tokens: int, generated: int, seconds: float) -> None:
        with self.cond:
            self.prompt_tokens += prompt_tokens
            self.generation_tokens += generated
            self.success[reason] += 1
            self.e2e.observe(seconds)

    def render(self) -> str:
        m = f'model_name="{self.model}"'
        with self.cond:
            usage = self.kv_usage if self.kv_usage is not None else min(1.0, self.running / self.max_num_seqs)
            lines = [
                "# HELP vllm:num_requests_running Number of requests in model execution batches.",
                "# TYPE vllm:num_requests_running gauge",
                f"vllm:num_requests_running{{{m}}} {float(self.running)}",
                "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
                "# TYPE vllm:num_requests_waiting gauge",
                f"vllm:num_requests_waiting{{{m}}} {float(self.waiting)}",
                "# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.",
                "# TYPE vllm:gpu_cache_usage_perc gauge",
                f"vllm:gpu_cache_usage_perc{{{m}}} {usage!r}",
                "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
                "# TYPE vllm:kv_cache_usage_perc gauge",
                f"vllm:kv_cache_usage_perc{{{m}}} {usage!r}",
                "# HELP vllm:lora_requests_info Running stats on lora requests.",
                "# TYPE vllm:lora_requests_info gauge",
                *self._lora_lines(),
                "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
                "# TYPE vllm:prompt_tokens_total counter",
                f"vllm:prompt_tokens_total{{{m}}} {float(self.prompt_tokens)}",
                "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
                "# TYPE vllm:generation_tokens_total counter",
                f"vllm:generation_tokens_total{{{m}}} {float(self.generation_tokens)}",
                "# HELP vllm:request_success_total Count of successfully processed requests.",
                "# TYPE vllm:request_success_total counter",
            ]
            lines += [f'vllm:request_success_total{{finished_reason="{r}",{m}}} {float(n)}'
                      for r, n in self.success.items()]
            if self.prefix_cache:
                lines += [
                    "# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.",
                    "# TYPE vllm:prefix_cache_queries_total counter",
                    f"vllm:prefix_cache_queries_total{{{m}}} {float(self.prefix_queries)}",
                    "# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.",
                    "# TYPE vllm:prefix_cache_hits_total counter",
                    f"vllm:prefix_cache_hits_total{{{m}}} {float(self.prefix_hits)}",
                ]
            lines += self.ttft.render("vllm:time_to_first_token_seconds",
                                      "Histogram of time to first token in seconds.", m)
            lines += self.e2e.render("vllm:e2e_request_latency_seconds",
                                     "Histogram of e2e request latency in seconds.", m)
            lines += self.tpot.render("vllm:time_per_output_token_seconds",
                                      "Histogram of time per output token in seconds.", m)
        return "\n".join(lines) + "\n"
