"""Scraping the model servers' ``/metrics``: one worker per round, results shared with all.

On every tick, for each picker cluster whose round is due, the worker holding the cluster's lease
(``aigw.picker.<cluster>.lease``, taken by CAS for two intervals and renewed by its holder each
round) sends one HTTP callout per endpoint: ``GET <metrics_path>`` to ``scrape_cluster`` (default:
the model's ORIGINAL_DST cluster) with the destination header set to the endpoint, so Envoy
connects to exactly that pod. Each answer is parsed (``promtext``) and recorded in shared data
(``state``) in one write when the round's last answer arrives (or at the next tick, if one hangs);
a refused, timed-out, non-200 or non-vLLM answer marks the endpoint down until a scrape succeeds
again. An endpoint whose previous scrape is still in flight is skipped, so a hanging pod never
piles up callouts.
"""

from __future__ import annotations

from proxywasm import CalloutResponse, Counter, Gauge, HostError, LogLevel, MetricCache
from proxywasm import hostcalls as hc

from ..lease import VM_TOKEN, take_lease
from ..metric_names import endpoint_metric
from . import promtext, state

TYPE_CHECKING = False
if TYPE_CHECKING:
    from proxywasm import RootContext

    from .config import EndpointPicker

_GAUGES = MetricCache(Gauge)
_COUNTERS = MetricCache(Counter)


class Scraper:
    """This VM's scraping of one cluster."""

    def __init__(self, picker: EndpointPicker) -> None:
        self.picker = picker
        self.known: frozenset = frozenset()  # endpoints of the cluster, over all configs
        self.next_due = 0
        self.in_flight: dict[str, int] = {}  # endpoint -> when its scrape started (ms)
        self.answers: list[tuple[str, int, promtext.ServerMetrics | None, str]] = []  # not yet published

    def flush(self) -> None:
        """Publish the answers received so far (one CAS write), then gauges and up/down logs."""
        answers, self.answers = self.answers, []
        if not answers:
            return
        picker = self.picker
        before = state.record(picker.cluster, [(ep, t, m) for ep, t, m, _ in answers],
                              hc.now_ms(), self.known)
        for ep, _, m, why in answers:
            was_up, fails, itl = before.get(ep, (False, 0, 0.0))
            _GAUGES(endpoint_metric(picker.cluster, ep, "up")).set(int(m is not None))
            if m is not None:
                _GAUGES(endpoint_metric(picker.cluster, ep, "waiting")).set(int(m.waiting))
                _GAUGES(endpoint_metric(picker.cluster, ep, "running")).set(int(m.running))
                _GAUGES(endpoint_metric(picker.cluster, ep, "kv_cache_percent")).set(int(m.kv_cache * 100 + 0.5))
                if itl > 0:
                    _GAUGES(endpoint_metric(picker.cluster, ep, "itl_ms")).set(int(itl + 0.5))
                if not was_up and fails:
                    hc.log(LogLevel.INFO, f"endpoint {ep} of {picker.cluster} is back (metrics scraped)")
            else:
                _COUNTERS(endpoint_metric(picker.cluster, ep, "scrape_failures")).increment()
                if was_up or not fails:
                    hc.log(LogLevel.WARN, f"endpoint {ep} of {picker.cluster} is down: scrape of "
                                          f"{picker.metrics_path} failed ({why})")


_SCRAPERS: dict[str, Scraper] = {}


def pickers_by_cluster(pickers: list[EndpointPicker]) -> dict[str, tuple[EndpointPicker, tuple]]:
    """cluster -> (its first picker, the union of its endpoints over all configs, in order)."""
    out: dict[str, tuple[EndpointPicker, tuple]] = {}
    for p in pickers:
        first, eps = out.get(p.cluster, (p, ()))
        out[p.cluster] = (first, eps + tuple(e for e in p.endpoints if e not in eps))
    return out


def period_ms(pickers: list[EndpointPicker]) -> int:
    """The tick period scraping needs (0: no pickers)."""
    return min((p.scrape_interval_ms for p in pickers), default=0)


def scrape(root: RootContext, pickers: list[EndpointPicker], now_ms: int) -> None:
    for cluster, (picker, endpoints) in pickers_by_cluster(pickers).items():
        s = _SCRAPERS.get(cluster)
        if s is None:
            s = _SCRAPERS[cluster] = Scraper(picker)
        s.flush()  # answers of a round whose last scrape still hangs
        if now_ms < s.next_due:
            continue
        interval = picker.scrape_interval_ms
        s.next_due = now_ms + interval - interval // 4  # a tick arriving a little early still counts
        if not take_lease(state.key_of(cluster) + ".lease", VM_TOKEN, now_ms, 2 * interval):
            continue  # another worker scrapes this round
        s.picker, s.known = picker, frozenset(endpoints)
        for ep in endpoints:
            started = s.in_flight.get(ep)
            if started is not None and now_ms - started <= 2 * picker.scrape_timeout_ms + 1000:
                continue
            _start(root, s, ep, now_ms)


def _start(root: RootContext, s: Scraper, ep: str, now_ms: int) -> None:
    picker = s.picker
    headers = [(":method", "GET"), (":path", picker.metrics_path), (":authority", ep), (picker.header, ep),
               ("accept", "text/plain")]
    s.in_flight[ep] = now_ms

    def done(resp: CalloutResponse) -> None:
        s.in_flight.pop(ep, None)
        status = resp.status
        try:
            metrics = promtext.parse(resp.body) if status == 200 else None
        except Exception:  # promtext is meant never to raise; a bug must not stop scraping
            metrics = None
        why = "" if metrics else ("no answer" if not status else f"status {status}" if status != 200
                                  else "no vLLM metrics in the answer")
        s.answers.append((ep, now_ms, metrics, why))
        if not s.in_flight:
            s.flush()

    try:
        root.http_call(picker.target, headers, b"", callback=done, timeout_ms=picker.scrape_timeout_ms)
    except HostError as e:  # e.g. no such cluster
        s.in_flight.pop(ep, None)
        s.answers.append((ep, now_ms, None, f"callout refused by Envoy ({e})"))
        if not s.in_flight:
            s.flush()
