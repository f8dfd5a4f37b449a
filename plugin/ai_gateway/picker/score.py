"""Choosing the endpoint for one request from the picker's last scrapes.

Each endpoint is, as of this worker's copy of the shared record (``state``):

* **fresh**: its last scrape succeeded and answered within ``stale_after_ms``;
* **down**: its last scrape failed (refused, timed out, not 200, not a vLLM metrics page);
* **stale**: neither (no scrape yet, or scraping stopped).

A fresh endpoint is **saturated** when ``waiting >= queue_threshold`` or ``kv_cache >=
kv_cache_threshold`` (the Gateway API inference extension's utilization detector).

1. Fresh endpoints exist and some are not saturated: the highest **score** among those wins
   (ties rotate per worker). The score is counted in requests of load: minus what is at the pod, plus
   what an affinity is worth::

       score = - w.running  * load * (1 + w.speed * (slowness - 1))
               - w.queue    * q                          q: vllm:num_requests_waiting
               - w.kv_cache * kv / kv_cache_threshold    kv: vllm:kv_cache_usage_perc (0..1)
               + w.lora     * lora                       LoRA adapter affinity, below
               + w.prefix   * credit                     prefix affinity (``affinity``), 0..1

   ``load`` = the scraped running + waiting requests, plus this worker's picks since that scrape, minus
   this worker's requests there that ended since (never below its own requests in flight there): it
   follows every pick and every answer at once, between scrapes. ``slowness`` = the pod's time per
   output token (``vllm:time_per_output_token_seconds``, between scrapes, smoothed) over the fastest
   candidate's, at most ``MAX_SLOWNESS``, and 1 below ``SLOWNESS_FLOOR`` (batch size and prefill
   chunks move it that much on equal pods): a pod decoding at half speed counts its requests twice.
   ``lora`` applies when the request's upstream model is not the pods' base model (an adapter) and
   the pods report ``vllm:lora_requests_info``: 1 the adapter is in the pod's batch (scraped
   ``running_lora_adapters``, or this worker has a request for it in flight there), 0.9 / 0.7 a
   free adapter slot (fewer than ``max_lora`` adapters active) where this worker recently sent it /
   did not, 0.5 queued for loading (``waiting_lora_adapters``), 0 no slot (the request would wait for
   a batch of other adapters to drain). ``credit``: how much of the prompt's start this worker sent
   to that pod lately (a multi-turn chat's history, a shared system prompt). An affinity is worth a
   fixed number of requests (``w.prefix``, ``w.lora``): a pod holding the prefix gets it until it has
   that many more requests than another, then the others help (and learn the prefix too).
2. Every fresh endpoint is saturated: **sheddable** requests are refused (429); critical and
   standard ones go to the fresh endpoint with the best score, as in 1 (the least loaded, unless an
   affinity outweighs a difference in load: the score's load follows every pick, unlike the
   scraped queue, so a burst does not herd onto the pod whose queue looked shortest at the last scrape).
3. No fresh endpoint: **least request** over the stale ones, or over all endpoints if every one is
   down: fewest of this worker's own requests in flight, ties rotating (the request may still
   succeed; Envoy answers 503 if not). Nothing is shed without evidence.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .config import EndpointPicker
    from .state import Endpoint, View

SCORED, LEAST_LOADED, UNSCORED = "scored", "least_loaded", "unscored"
_EPS = 1e-9
MAX_SLOWNESS = 3.0  # a pod counts at most 3x its requests for being slow
SLOWNESS_FLOOR = 1.3  # a pod less than 30% slower than the fastest counts as fast: batch size and prefill chunks
# move the time per output token that much on equal pods, and a busy pod must not look slow for being busy
RECENT_ADAPTERS = 4  # adapters remembered per endpoint as probably still loaded


def lora_score(e: Endpoint, model: str) -> float:
    """How well a request for adapter ``model`` fits the endpoint's batch (1: it is being served there)."""
    if model in e.adapters or model in e.running_adapters:
        return 1.0
    active = len(e.running_adapters) + sum(1 for a in e.adapters if a not in e.running_adapters)
    if active < e.max_lora:
        return 0.9 if model in e.recent else 0.7  # a free slot; recently served here: probably no load
    if model in e.waiting_adapters:
        return 0.5
    return 0.0


def _rotate(view: View, best: list[Endpoint]) -> Endpoint:
    if len(best) == 1:
        return best[0]
    view.rr += 1
    return best[view.rr % len(best)]


def _slowness(candidates: list[Endpoint]) -> list[float]:
    """Each pod's time per output token over the fastest one's (1 when any is unknown)."""
    itls = [e.itl for e in candidates]
    fastest = min(itls)
    if fastest <= 0:
        return [1.0] * len(candidates)
    out = []
    for v in itls:
        r = v / fastest
        out.append(1.0 if r < SLOWNESS_FLOOR else min(MAX_SLOWNESS, r))
    return out


def scores(candidates: list[Endpoint], picker: EndpointPicker, model: str,
           credit: dict[int, float] | None) -> list[float]:
    """Each candidate's score, in requests: minus its load, plus what an affinity is worth."""
    w = picker.weights
    kt = picker.kv_cache_threshold
    slow = _slowness(candidates) if w.speed > 0 else [1.0] * len(candidates)
    adapter = w.lora > 0 and any(e.max_lora >= 0 for e in candidates) and all(e.model != model for e in candidates)
    out = []
    for e, sl in zip(candidates, slow, strict=True):
        s = -(w.running * e.load_estimate() * (1 + w.speed * (sl - 1)) + w.queue * e.waiting + w.kv_cache * e.kv / kt)
        if adapter and e.max_lora >= 0:
            s += w.lora * lora_score(e, model)
        if credit:
            s += w.prefix * credit.get(e.bit, 0.0)
        out.append(s)
    return out


def _least(view: View, endpoints: list[Endpoint]) -> Endpoint:
    """Fewest of this VM's requests in flight (least request), ties rotating."""
    low = min(e.inflight for e in endpoints)
    return _rotate(view, [e for e in endpoints if e.inflight == low])


def choose(view: View, picker: EndpointPicker, endpoints: list[Endpoint], now_ms: int, sheddable: bool,
           model: str, credit: dict[int, float] | None) -> tuple[Endpoint | None, str]:
    """(endpoint, how) per the module's rules; (None, ...) = shed the request."""
    horizon = now_ms - picker.stale_after_ms
    fresh = [e for e in endpoints if e.up and e.ok_ms >= horizon]
    if not fresh:
        stale = [e for e in endpoints if not e.down]
        return _least(view, stale or endpoints), UNSCORED
    qt, kt = picker.queue_threshold, picker.kv_cache_threshold
    free = [e for e in fresh if e.waiting < qt and e.kv < kt]
    how = SCORED
    if not free:
        if sheddable:
            return None, LEAST_LOADED
        free, how = fresh, LEAST_LOADED  # all saturated: the same score picks the least loaded (load is live)
    if len(free) == 1:
        return free[0], how
    s = scores(free, picker, model, credit)
    top = max(s)
    return _rotate(view, [e for e, v in zip(free, s, strict=True) if v >= top - _EPS]), how
