"""Metrics defined once per VM, by name; ids are cached so hot paths skip the definition call."""

from __future__ import annotations

from . import hostcalls as hc
from .abi import MetricType


class Metric:
    __slots__ = ("_id", "name", "type")

    def __init__(self, metric_type: MetricType, name: str) -> None:
        self.type = metric_type
        self.name = name
        self._id: int | None = None

    @property
    def id(self) -> int:
        if self._id is None:
            self._id = hc.define_metric(self.type, self.name)
        return self._id

    def get(self) -> int:
        return hc.get_metric(self.id)


class Counter(Metric):
    __slots__ = ()

    def __init__(self, name: str) -> None:
        super().__init__(MetricType.COUNTER, name)

    def increment(self, n: int = 1) -> None:
        """Add ``n`` (>= 0). Envoy refuses a zero increment: 0 only defines the metric (it shows as 0)."""
        mid = self._id if self._id is not None else self.id
        if n:
            st = hc.raw_calls.proxy_increment_metric(mid, n)  # direct: runs on every request
            if st:
                raise hc._error("proxy_increment_metric", st)


class Gauge(Metric):
    __slots__ = ()

    def __init__(self, name: str) -> None:
        super().__init__(MetricType.GAUGE, name)

    def set(self, value: int) -> None:
        hc.record_metric(self._id if self._id is not None else self.id, value)

    def add(self, n: int) -> None:
        hc.increment_metric(self._id if self._id is not None else self.id, n)


class Histogram(Metric):
    __slots__ = ()

    def __init__(self, name: str) -> None:
        super().__init__(MetricType.HISTOGRAM, name)

    def record(self, value: int) -> None:
        hc.record_metric(self._id if self._id is not None else self.id, value)


class MetricCache:
    """Metrics whose names are built at run time (e.g. with labels), defined on first use."""

    def __init__(self, metric_type: type[Counter] | type[Gauge] | type[Histogram]) -> None:
        self._type = metric_type
        self._by_name: dict[str, Metric] = {}

    def __call__(self, name: str) -> Metric:
        m = self._by_name.get(name)
        if m is None:
            m = self._by_name[name] = self._type(name)
        return m
