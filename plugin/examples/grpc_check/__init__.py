"""Example: ask a gRPC policy service about every request, and stream an audit trail to it.

Per request, a unary call ``<service>/Check`` carries ``"<METHOD> <path>"``; the answer ``allow`` lets the
request on (with ``x-policy: allow``), anything else gets a 403, and a failed call (service down, timeout) a 503.
The root context keeps one gRPC stream ``<service>/Audit`` open and, on each tick, sends the paths allowed since
the last one on it (a stream belongs to the context that opened it: only the root sends on it); the service
answers each message with the number of entries it has received so far, published as the gauge
``grpc_check.audit_acks`` (a closed stream is opened again on the next tick).

Messages are raw bytes here (a generic gRPC handler); a real service would use protobuf-encoded messages.
"""

from __future__ import annotations

from proxywasm import (
    Action,
    Fields,
    Gauge,
    GrpcResponse,
    GrpcStream,
    HttpContext,
    LogLevel,
    RootContext,
    record,
    set_root_context,
)

ACKS = Gauge("grpc_check.audit_acks")


@record
class Config:
    cluster: str  # an HTTP/2 cluster serving the policy service
    service: str
    timeout_ms: int
    audit: bool


class Check(HttpContext):
    def on_request_headers(self, num_headers: int, end_of_stream: bool) -> Action:
        cfg: Config = self.config
        h = self.request_headers
        what = f"{h.get(':method', '')} {h.get(':path', '')}".encode()
        self.grpc_call(cfg.cluster, cfg.service, "Check", what, self.on_answer, timeout_ms=cfg.timeout_ms)
        return Action.PAUSE

    def on_answer(self, resp: GrpcResponse) -> None:
        if not resp.ok:
            self.send_local_response(503, f"policy service unavailable (gRPC status {resp.status})\n")
            return
        if resp.message != b"allow":
            self.send_local_response(403, b"denied by policy\n")
            return
        self.request_headers.set("x-policy", "allow")
        self.root.pending.append(self.request_headers.get(":path") or "")
        self.resume_request()


class CheckRoot(RootContext):
    http_context = Check
    stream: GrpcStream | None = None

    def __init__(self, context_id: int) -> None:
        super().__init__(context_id)
        self.pending: list[str] = []  # allowed paths not yet sent to the audit stream

    def parse_config(self, doc: dict) -> Config:
        f = Fields(doc)
        cfg = Config(f.str("cluster"), f.str("service"), f.int("timeout_ms", 500, min=1, max=60_000),
                     f.bool("audit", True))
        f.done()
        return cfg

    def on_config_loaded(self) -> None:
        self.set_tick_period_ms(200)

    def on_tick(self) -> None:
        cfg: Config | None = self.rules.global_config if self.rules else None
        if cfg is None or not cfg.audit:
            return
        if self.stream is None:
            self.stream = self.grpc_stream(cfg.cluster, cfg.service, "Audit", self.on_ack, self.on_audit_closed)
        while self.pending:
            self.stream.send(self.pending.pop(0).encode())

    def on_ack(self, message: bytes) -> None:
        if message.isdigit():
            ACKS.set(int(message))

    def on_audit_closed(self, resp: GrpcResponse) -> None:
        self.log(LogLevel.INFO, f"audit stream closed with gRPC status {resp.status}; reopening")
        self.stream = None


set_root_context(CheckRoot)
