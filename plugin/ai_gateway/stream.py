"""One client request through the gateway: parse, route, mirror, fall back."""

from __future__ import annotations

import json
import random

from proxywasm import Action, HttpContext, LogLevel
from proxywasm import hostcalls as hc

from .config import Config, Model
from .errors import JSON_HEADERS, GatewayError
from .fallback import Fallback
from .request import parse_body, with_model
from .routing import resolve
from .upstream import callout_headers, mirror

RNG = random.Random()  # seeded from the host's random_get, per VM


def models_list(cfg: Config) -> bytes:
    names = [*cfg.models, *cfg.aliases]
    return json.dumps({"object": "list", "data": [
        {"id": n, "object": "model", "created": 0, "owned_by": "ai-gateway"} for n in names]}).encode()


class GatewayStream(HttpContext):
    model: Model | None = None  # set once the request is routed
    requested = ""
    fallback: Fallback | None = None
    active = False  # this stream is an inference request the gateway handles

    def on_request_headers(self, num_headers: int, end_of_stream: bool) -> Action:
        cfg: Config | None = self.config
        if cfg is None or not cfg.enabled:
            return Action.CONTINUE
        h = self.request_headers
        # Only the gateway may choose upstreams: a client cannot route by sending these itself.
        h.remove(cfg.route_header)
        h.remove(cfg.model_header)
        method = h.get(":method")
        path = (h.get(":path") or "").split("?", 1)[0]
        if path == "/v1/models" and method == "GET" and cfg.models_endpoint:
            self.send_local_response(200, models_list(cfg), JSON_HEADERS)
            return Action.PAUSE
        if method != "POST" or path not in cfg.paths:
            return Action.CONTINUE
        ctype = (h.get("content-type") or "").lower()
        if ctype and "json" not in ctype:
            return Action.CONTINUE  # not ours to judge: pass through untouched
        if end_of_stream:
            return self._reject(GatewayError(400, "request body is required", "missing_body"))
        length = h.get("content-length")
        if length and length.isdigit() and int(length) > cfg.max_body_bytes:
            return self._reject(self._too_large(cfg))
        self.active = True
        return Action.PAUSE  # hold the headers until the body names the model

    def on_request_body(self, body_size: int, end_of_stream: bool) -> Action:
        if not self.active or self.model is not None:
            return Action.CONTINUE
        cfg: Config = self.config
        if body_size > cfg.max_body_bytes:
            return self._reject(self._too_large(cfg))
        if not end_of_stream:
            return Action.PAUSE
        try:
            self._route(cfg, self.request_body.read())
        except GatewayError as e:
            return self._reject(e)
        return Action.CONTINUE

    def _route(self, cfg: Config, body: bytes) -> None:
        doc, requested = parse_body(body)
        h = self.request_headers
        model = resolve(cfg, requested, h.get, RNG)
        if model is None:
            raise GatewayError(404, f"The model `{requested}` does not exist.", "model_not_found", "model")
        self.model, self.requested, self.doc = model, requested, doc
        h.set(cfg.route_header, model.cluster)
        h.set(cfg.model_header, model.name)
        if model.upstream_model != requested:
            body = with_model(doc, model.upstream_model)
            self.request_body.replace(body)
            h.set("content-length", str(len(body)))
        if model.fallback or model.mirror:
            self.upstream_headers = h.items()
        if model.mirror and RNG.random() * 100 < model.mirror.percent:
            shadow = cfg.models[model.mirror.model]
            mirror(self, self.root.context_id, shadow, callout_headers(self.upstream_headers, shadow, cfg),
                   with_model(doc, shadow.upstream_model), model.name)

    def on_response_headers(self, num_headers: int, end_of_stream: bool) -> Action:
        model = self.model
        if model is None:
            return Action.CONTINUE
        if model.fallback is not None and self.fallback is None:
            status = self.response_headers.get(":status") or "0"
            if status.isdigit() and int(status) in model.fallback.on_status:
                hc.log(LogLevel.INFO, f"{model.name} answered {status}: falling back")
                self.fallback = Fallback(self, self.config, model, self.doc, self.upstream_headers, RNG)
                self.fallback.start()
                return Action.PAUSE
        self.response_headers.set("x-ai-served-model", model.name)
        return Action.CONTINUE

    def on_response_body(self, body_size: int, end_of_stream: bool) -> Action:
        # While falling back, the failed upstream's body is held back from the client.
        return Action.PAUSE if self.fallback is not None and self.fallback.current is not None else Action.CONTINUE

    def on_fallback_done(self, served: Model | None) -> None:
        if served is not None:
            self.model = served
        elif self.fallback is not None:
            self.fallback.current = None  # the original response flows again

    def _reject(self, err: GatewayError) -> Action:
        self.send_local_response(err.status, err.body, JSON_HEADERS, err.code)
        return Action.PAUSE

    @staticmethod
    def _too_large(cfg: Config) -> GatewayError:
        return GatewayError(413, f"request body exceeds {cfg.max_body_bytes} bytes", "request_too_large")
