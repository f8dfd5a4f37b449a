"""One client request through the gateway: parse, route (one attempt), mirror, fall back, observe the answer."""

from __future__ import annotations

import random

from proxywasm import Action, Counter, HttpContext, LogLevel, MetricCache
from proxywasm import hostcalls as hc
from proxywasm.properties import route_name

from . import cache, consumers, retries
from .attempt import NO_KEYS, address, pool_of
from .catalog import MODELS_PATH, is_model_path, model_object, models_list
from .classify import classify
from .clients import BY_PATH, CHAT_PATH, CLIENT_KEY_HEADER
from .config import Config, Model
from .content_routing import choose
from .errors import JSON_HEADERS, GatewayError, shown
from .estimate import OUTPUT_KEYS, input_tokens
from .fallback import Fallback
from .observe import ClientObservation, Observation, attempts_json, client_cancelled, publish, record_failed_attempts
from .paths import normalize
from .picker import finished as endpoint_finished
from .picker import route as pick_endpoint
from .reader import AnswerReader
from .request import duplicate_model, encode_json, json_media_type, needs_usage, parse_body, with_usage_requested
from .routing import resolve
from .upstream import callout_headers, mirror

_CLIENT_REQUESTS = MetricCache(Counter)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .providers import Answer

RNG = random.Random()  # seeded from the host's random_get, per VM
_RESPONSE_HEADERS = (b":status", b"content-type", b"retry-after")
_warned_no_filter = [False]


def _key_statuses(model: Model) -> frozenset:
    return model.keys.eject_on if model.keys else frozenset()


class GatewayStream(AnswerReader, HttpContext):
    model: Model | None = None  # set once the request is routed
    requested = ""
    fallback: Fallback | None = None
    fallback_from = ""
    active = False  # this stream is an inference request the gateway handles
    started_ns = 0
    consumer = ""
    sse_answer = False  # the client asked for an SSE answer
    drop_usage = False  # the gateway asked for usage on the client's behalf
    status = 0
    body = b""  # the request as the client sent it (an input estimate reads it, when the server reports no usage)
    published = False
    key_idx: int | None = None  # index of the pool key this request went out with
    endpoint = None  # (picker.state.Endpoint, upstream model): the pod picked, in flight there until on_log
    headers_in: dict[str, str] = {}  # the request headers the gateway reads (Config.request_headers), as sent
    who: consumers.Consumer | None = None  # the authenticated consumer (consumers/)
    gate: consumers.Gate | None = None  # its limits' admission
    admin_target = ""  # an admin API call for this consumer's balance waits for its body
    sent_headers: list[tuple[str, str]] | None = None  # the request headers, kept when resumed from a callout
    upstream_path = ""  # the path and query the request goes upstream with (normalised: paths.py)
    cache_key = ""  # a cacheable request's key (cache.py): its whole 200 answer is stored
    cache_state = ""  # hit | miss | skip (x-ai-cache), "" without a cache
    attempts: retries.Attempts | None = None  # fallback as Envoy retries: the attempts so far
    upstream: retries.UpstreamAttempt | None = None  # set when this context is the attempt filter's
    answer: Answer | None = None  # how the answering attempt's answer becomes OpenAI's (None: it is already)
    client: Any = None  # a client protocol other than OpenAI's (clients.BY_PATH): its translations, per request

    # -- request --

    def on_request_headers(self, num_headers: int, end_of_stream: bool) -> Action:
        cfg: Config | None = self.config
        h = self.request_headers
        if cfg is None or not cfg.enabled:
            if cfg is not None and cfg.attempt_filter:  # this instance is the upstream (per-attempt) filter
                return retries.on_attempt_headers(self)
            # Off for this stream, yet the routing, model and endpoint headers of every configuration stay the
            # gateway's: a client must not pick a cluster or an address.
            for name in self.root.strip_headers:
                h.remove(name)
            return Action.CONTINUE
        hd = h.snapshot(cfg.request_headers)  # one host call for the headers read below and later
        # Only the gateway may choose upstreams: a client cannot route (cluster, model, pod) by sending these
        # (those of every configuration: GatewayRoot.on_config_loaded).
        for name in cfg.strip_headers:
            if name in hd:
                h.remove(name)
        raw, _, query = hd.get(":path", "").partition("?")
        path = raw if raw in cfg.paths else normalize(raw)
        client = None
        if path in BY_PATH and path in cfg.paths:  # another protocol: its errors too (from here on)
            client = self.client = BY_PATH[path]()
        cc = cfg.consumers
        if cc is not None:  # every request through the gateway names its consumer
            done = consumers.authenticate(self, cc, hd, cfg.consumer_header)
            if done is not None:
                return done
            if cc.query:  # the key parameter is gone from the path
                query = hd.get(":path", "").partition("?")[2]
        method = hd.get(":method")
        if method == "GET" and cfg.models_endpoint and path.startswith(MODELS_PATH):
            if path == MODELS_PATH:
                self.send_local_response(200, models_list(cfg), JSON_HEADERS)
                return Action.PAUSE
            if is_model_path(path):
                try:
                    self.send_local_response(200, model_object(cfg, path), JSON_HEADERS)
                except GatewayError as e:
                    return self._reject(e)
                return Action.PAUSE
        if method != "POST" or path not in cfg.paths:
            return Action.CONTINUE
        if client is not None:
            self.upstream_path = CHAT_PATH
            self._client_request_headers(h, hd, cc is None)
        else:
            self.upstream_path = path + "?" + query if query else path
            if path != raw:  # the upstream gets the path the gateway judged (paths.py)
                h.set(":path", self.upstream_path)
        ctype = hd.get("content-type")
        if ctype and ctype != "application/json" and not json_media_type(ctype):
            return self._reject(GatewayError(
                415, f"Content-Type must be application/json for {path}, got {shown(ctype)!r}",
                "unsupported_content_type"))
        if end_of_stream:
            return self._reject(GatewayError(400, "request body is required", "missing_body"))
        length = hd.get("content-length", "").lstrip("0")
        if length.isascii() and length.isdigit() and (len(length) > 18 or int(length) > cfg.max_body_bytes):
            return self._reject(self._too_large(cfg))
        self.active = True
        self.started_ns = hc.now_ns()
        if hd.get("accept-encoding", "identity") != "identity":
            # Every answer is read (usage, TTFT, limits, the cache): a compressed one could not be, and a client
            # asking for gzip would skip its output tokens' accounting. Envoy's compressor can compress towards
            # the client after the gateway.
            h.set("accept-encoding", "identity")
        if cfg.consumer_header:  # declared trusted by the operator (set by an authentication in front)
            self.set_consumer(hd.get(cfg.consumer_header, ""))
        self.headers_in = hd
        return Action.PAUSE  # hold the headers until the body names the model

    def on_request_body(self, body_size: int, end_of_stream: bool) -> Action:
        if self.admin_target:
            return consumers.admin.on_body(self, self.config.consumers, self.request_body.read()) \
                if end_of_stream else Action.PAUSE
        if not self.active or self.model is not None:
            if self.upstream is not None:  # the attempt filter
                return retries.on_attempt_body(self, self.upstream, end_of_stream)
            return Action.CONTINUE
        cfg: Config = self.config
        if body_size > cfg.max_body_bytes:
            return self._reject(self._too_large(cfg))
        if not end_of_stream:
            return Action.PAUSE
        body = self.request_body.read()
        try:
            if self.client is not None:
                body = self._client_request(body)
                if self.client.counts_tokens:
                    return self._count_tokens(cfg, body)
            self._route(cfg, body)
        except GatewayError as e:
            return self._reject(e)
        if self.model is None:  # content routing asks its classifier first (not for a consumer over its limits)
            if cfg.consumers is not None:
                return consumers.precheck(self, cfg.consumers, lambda: classify(self, cfg, body))
            return classify(self, cfg, body)
        return self._proceed()

    def _proceed(self) -> Action:
        cfg: Config = self.config
        if cfg.cache is not None and self.model is not None:  # a hit answers here (cache.py)
            return cache.lookup(self, cfg.cache, self._admit)
        return self._admit()

    def _admit(self) -> Action:
        cfg: Config = self.config
        if cfg.consumers is not None and self.model is not None:  # before anything goes upstream
            return consumers.admit(self, cfg.consumers, self.model.name, self._mirror)
        self._mirror()
        return Action.CONTINUE

    def set_consumer(self, name: str) -> None:
        """The one place that names the stream's consumer (metrics, AI log): the trusted consumer header, or the
        gateway's own authentication. Metric labels are bounded and sanitised in observe.consumer_label."""
        self.consumer = name

    # -- the client's protocol: its request becomes chat completions first, its answer is translated last --

    def _client_request_headers(self, h: Any, hd: dict[str, str], forward_key: bool) -> None:
        """A request in another protocol goes upstream to chat completions (the Messages API's query, such as
        Claude Code's ``?beta=true``, stays here). Its ``x-api-key`` never goes upstream: without consumers it is
        sent as ``authorization: Bearer`` (as an OpenAI client's key would be), unless the client sent that too."""
        h.set(":path", CHAT_PATH)
        key = h.get(CLIENT_KEY_HEADER)
        if key is not None:
            h.remove(CLIENT_KEY_HEADER)
            if forward_key and "authorization" not in hd and key.strip():
                hd["authorization"] = "Bearer " + key.strip()
                h.set("authorization", hd["authorization"])

    def _client_request(self, body: bytes) -> bytes:
        """The client's body as the chat-completions request every later step reads (GatewayError: a 400)."""
        new = encode_json(self.client.request(body))
        self.request_body.replace(new)
        self.request_headers.set("content-length", str(len(new)))
        _CLIENT_REQUESTS(f"aigw.client.{self.client.protocol}.request_total").increment(1)
        return new

    def _count_tokens(self, cfg: Config, body: bytes) -> Action:
        """A client's token count, answered here for a model the consumer may use (estimate.input_tokens)."""
        _, requested = parse_body(body)
        if resolve(cfg, requested, self.headers_in.get, RNG) is None:
            raise GatewayError(404, f"The model `{shown(requested)}` does not exist.", "model_not_found", "model")
        denied = consumers.model_allowed(self, requested) if self.who is not None else None
        if denied is not None:
            raise denied
        self.send_local_response(200, b'{"input_tokens":%d}' % input_tokens(body), JSON_HEADERS)
        return Action.PAUSE

    def _client_answer_begins(self, content_type: str | None) -> None:
        """The upstream's answer begins: read as every answer is (usage, TTFT), but chunk by chunk, as the
        client's translation needs each one."""
        self.start_answer(content_type, tap=False)
        self.client.content_type = content_type
        if self.client.answer_begins(self.status, input_tokens(self.body)):
            self.sse = self.client.translator  # it reads the stream's usage and end as it translates
            self.count_response_strings(OUTPUT_KEYS)  # TTFT and estimates, in C
            self.counting = True
        elif self.status >= 400:
            self.response_headers.set("content-type", "application/json")

    def _client_answer(self, body_size: int, end_of_stream: bool) -> Action:
        """The answer in the client's protocol: a stream translated as it comes, a JSON answer whole at its end."""
        c = self.client
        tr = self.translator  # a provider's answer becomes OpenAI's first (providers/)
        if c.translator is not None:
            chunk = self.response_body.read() if body_size else b""
            if tr is not None:
                chunk = tr.feed(chunk, end_of_stream)
            if self.cache_buf is not None:
                self._keep(chunk)  # the cache keeps the OpenAI stream (a hit is translated like an answer)
            self.response_body.replace(c.translator.feed(chunk, end_of_stream))
            if end_of_stream:
                self.take_tap(True)
                self._publish()
            return Action.CONTINUE
        if not end_of_stream:
            return Action.PAUSE  # buffered until its end
        body = self.response_body.read()
        if tr is not None:
            body = tr.feed(body, True)
        if self.collector is not None:
            self.collector.feed(body)
        elif self.sse is not None:
            self.sse.feed(body, True)
        self.response_body.replace(c.whole(self.status, body, c.content_type))
        self._publish()
        return Action.CONTINUE

    def send_local_response(self, status: int, body: bytes | str = b"", headers: Any = (),
                            details: str = "") -> None:
        """Every reply the gateway sends itself (errors, cache hits, a callout fallback's answer) goes out in the
        client's protocol."""
        c = self.client
        if c is not None:
            body, headers = c.local_reply(status, body.encode() if isinstance(body, str) else body, headers)
        hc.send_local_response(status, body, headers, details.replace(" ", "_"))

    def _route(self, cfg: Config, body: bytes, target: str | None = None) -> None:
        """Route by the body's model (``target``: the one content routing's classifier picked)."""
        doc, requested = parse_body(body)
        h = self.request_headers
        routed = cfg.content_routes.get(requested) if cfg.content_routes else None
        if routed is not None and target is None:
            target = choose(routed, doc)
            if target is None:
                self.requested, self.doc = requested, doc  # the classifier decides (classify)
                return
        model = resolve(cfg, target or requested, self.headers_in.get, RNG)
        if model is None:
            raise GatewayError(404, f"The model `{shown(requested)}` does not exist.", "model_not_found", "model")
        if self.who is not None:
            denied = consumers.model_allowed(self, requested)
            if denied is not None:
                raise denied
        rewrite = model.upstream_model != requested or duplicate_model(doc)  # one "model" goes upstream
        self.sse_answer = doc.get("stream") is True
        if cfg.inject_stream_usage and needs_usage(doc):
            doc = with_usage_requested(doc)  # usage metrics need the final usage chunk
            self.drop_usage = cfg.strip_injected_usage
            rewrite = True
        self.model, self.requested, self.doc, self.body = model, requested, doc, body
        picker = cfg.pickers.get(model.cluster) if cfg.pickers else None
        if picker is not None:  # the least loaded pod, or 429 for a sheddable request when all are saturated
            ep = pick_endpoint(picker, model, doc, self.headers_in.get, self.started_ns // 1_000_000, cfg.metrics)
            self.endpoint = (ep, model.upstream_model)
            h.set(picker.header, ep.addr)
        now_ms = self.started_ns // 1_000_000
        # by position (keywords cost more per call): no source, the client's credential, no keys tried yet,
        # rewrite, the route keeps the host
        attempt = address(cfg, doc, model, now_ms, RNG, None, "authorization" in self.headers_in, NO_KEYS, rewrite,
                          False, self.upstream_path)
        if attempt is None:
            raise GatewayError(503, f"no upstream API key is available for model `{model.name}`; retry later",
                               "no_available_key")
        attempt.apply(h)  # a pool key replaces every value the client sent in that header
        if attempt.body is not None:
            self.request_body.replace(attempt.body)
        if attempt.key is not None:
            self.key_idx = attempt.key[1]
        if attempt.answer is not None:
            self.answer = attempt.answer
        fb = model.fallback
        if fb is not None and fb.cluster:  # fallback as Envoy retries: the attempt filter addresses each one
            if retries.IN_VM[0]:
                self.attempts = retries.expect(self, attempt, h, fb, doc, RNG)
            elif not _warned_no_filter[0]:  # its fallback goes through callouts
                _warned_no_filter[0] = True
                hc.log(LogLevel.WARN, f"models[{model.name}].fallback.cluster is set but no attempt filter runs in "
                                      "this VM (the router's upstream filter with {\"attempt_filter\": true} and "
                                      "the same vm_config): falling back through HTTP callouts")

    def _mirror(self) -> None:
        """Shadow traffic, once the request may go upstream (after the consumer's limits admitted it)."""
        model, cfg = self.model, self.config
        if model is not None and model.mirror and RNG.random() * 100 < model.mirror.percent:
            shadow = cfg.models[model.mirror.model]
            try:
                copy = address(cfg, self.doc, shadow, self.started_ns // 1_000_000, RNG, source=model,
                               path=self.upstream_path)
            except GatewayError:  # the shadow's provider cannot carry this request: no copy
                copy = None
            if copy is not None:  # no copy without a usable key
                mirror(self, shadow, callout_headers(self.request_headers.items(), copy, cfg), copy.body, model.name)

    # -- response --

    def on_response_headers(self, num_headers: int, end_of_stream: bool) -> Action:
        model = self.model
        if model is None:
            if self.upstream is not None:  # the attempt filter
                return retries.on_attempt_response(self, self.upstream)
            return Action.CONTINUE
        hd = self.response_headers.snapshot(_RESPONSE_HEADERS)  # one host call for the three read below
        status = hd.get(":status", "0")
        self.status = int(status) if status.isascii() and status.isdigit() else 0
        client = self.client
        if client is not None:
            client.content_type = hd.get("content-type")
            self.response_headers.remove("content-length")  # the answer is translated
        att = self.attempts
        if att is not None:  # Envoy retried: the attempt filter accounted each attempt's key
            model = self._answered(att, model)
            self.answer = att.answers.get(model.name)
        ctype = hd.get("content-type")
        if self.answer is not None:  # a provider's answer: OpenAI's status, content type and shapes from here on
            ctype = self._translated(self.answer, ctype)
        if att is None:
            key_failed = False
            if self.key_idx is not None and self.fallback is None:
                pool = pool_of(model)
                retry_after = hd.get("retry-after") if self.status == 429 else None
                pool.report(self.key_idx, self.status, hc.now_ms(), retry_after)
                key_failed = self.status in pool.cfg.eject_on
            fb = model.fallback
            if self.fallback is None and (key_failed or (fb is not None and self.status in fb.on_status)):
                hc.log(LogLevel.INFO, f"{model.name} answered {status}: "
                                      f"{'retrying' if key_failed else 'falling back'}")
                # The request headers as sent upstream: Envoy keeps the map readable for the stream's life, unless
                # the request was resumed from a callout's answer (consumers' Redis check): then they were kept then.
                self.fallback = Fallback(self, self.config, model, self.doc,
                                         self.sent_headers or self.request_headers.items(), RNG,
                                         key_failed, self, self._fallback_done, self.key_idx, self.status)
                self.fallback.start()
                return Action.PAUSE
        self.response_headers.set("x-ai-served-model", model.name)
        if self.cache_state:
            self.response_headers.set(cache.RESPONSE_HEADER, self.cache_state)
        if self.gate is not None:
            for k, v in consumers.rate_headers(self):
                self.response_headers.set(k, v)
        if client is None:
            self.start_answer(ctype)
        else:
            self._client_answer_begins(ctype)
        if end_of_stream:
            self._publish()
        return Action.CONTINUE

    def _translated(self, answer: Answer, ctype: str | None) -> str:
        # the translator reports usage to the gateway itself: no usage chunk the client did not ask for (a client
        # protocol's translator reads it: it gets one)
        status, ctype, self.translator = answer.begin(self.status, ctype, hc.now_ns() // 1_000_000_000,
                                                      not self.drop_usage or self.client is not None)
        h = self.response_headers
        if status != self.status:
            self.status = status
            h.set(":status", str(status))
        h.set("content-type", ctype)
        h.remove("content-length")
        return ctype

    def on_response_body(self, body_size: int, end_of_stream: bool) -> Action:
        if end_of_stream:
            self.ended = True
        if self.fallback is not None and self.fallback.current is not None:
            c = self.client
            if end_of_stream and c is not None:  # should it go out after all: in the client's protocol
                self.response_body.replace(c.whole(self.status, self.response_body.read(), c.content_type))
            return Action.PAUSE  # the failed upstream's body is held back while falling back
        if self.model is None or self.published:
            return Action.CONTINUE
        if self.client is not None:  # last of all: the answer in the client's protocol
            return self._client_answer(body_size, end_of_stream)
        if end_of_stream and self.tapped:  # the usual end of a tapped answer: what the tap kept, read once
            self.take_tap(True)
        else:
            self.read_answer(body_size, end_of_stream)
        if end_of_stream:
            # a provider's stream is whole when its translation reached [DONE] (Gemini's has no end marker)
            self._publish(self.translator is None or self.sse is None or self.sse.done)
        return Action.CONTINUE

    def _answered(self, att: retries.Attempts, primary: Model) -> Model:
        """After Envoy's attempts: the model that answered, ``x-ai-fallback-from`` or ``x-ai-fallback-exhausted``."""
        served, failed = att.answered()
        if served is None:  # no attempt ran (e.g. a local reply before any): the answer is the primary's
            return primary
        fb = primary.fallback
        assert fb is not None
        if failed and (self.status in fb.on_status or self.status in _key_statuses(primary) or not self.status):
            self.response_headers.set("x-ai-fallback-exhausted", str(failed))
            return primary
        if served is not primary:
            self.response_headers.set("x-ai-fallback-from", primary.name)
            self.fallback_from = primary.name
            self.model = served
        return served

    def _fallback_done(self, served: Model | None, status: int) -> None:
        """A callout fallback ended: ``served`` answered with ``status`` (sent as a local reply), or none did and
        the primary's own response goes on."""
        if served is not None:
            self.status = status
            if self.model is not None and served.name != self.model.name:
                self.fallback_from = self.model.name
            self.model = served
            self._publish()
        elif self.fallback is not None:
            self.fallback.current = None  # the original response flows again
            if self.client is None:
                self.start_answer(self.response_headers.get("content-type"))
            else:
                self._client_answer_begins(self.response_headers.get("content-type"))

    # -- end --

    def on_log(self) -> None:
        if self.endpoint is not None:
            endpoint_finished(*self.endpoint)
            self.endpoint = None
        if self.tapped or self.counting:
            self.take_tap(False)
        if self.model is not None and not self.published:
            # The stream ended early: upstream cut off, client gone, reset. An SSE answer that reached its
            # "data: [DONE]" is whole even so: the official OpenAI client closes the connection right there,
            # often before the upstream's terminating chunk has arrived.
            # A fallback that failed everywhere lets the primary's error through after its end was seen.
            complete = self.answer_done
            self._publish(complete, not complete and client_cancelled())
        # The stream and its Fallback refer to each other: unlinked here, both go when Envoy deletes the stream
        # instead of waiting (with the request's body and document) for a full garbage collection.
        self.fallback = None
        if self.attempts is not None:
            retries.forget(self.attempts)

    def _publish(self, complete: bool = True, cancelled: bool = False) -> None:
        self.published = True
        cfg: Config = self.config
        assert self.model is not None
        charged = self.gate is not None and cfg.consumers is not None
        cached = self.keep_whole and cfg.cache is not None
        if charged or cached:
            usage, estimated = self.answer_usage()
        if cached and complete and self.status == 200 and not self.fallback_from:
            cache.store_answer(self, cfg.cache, self._cache_body(), None if estimated else usage)
        if charged:  # once, to the consumer, for the model that answered (usage, or the estimate when served)
            consumers.charge(self, cfg.consumers, usage, self.model.name)
        if not cfg.metrics and cfg.ai_log == "off":
            return
        now = hc.now_ns()
        if not (charged or cached):
            usage, estimated = self.answer_usage()
        c = self.client
        obs = (Observation if c is None else ClientObservation)(
            model=self.requested, served=self.model.name, route=route_name(),
            cluster=self.model.cluster, consumer=self.consumer or "none", status=self.status, sse=self.sse_answer,
            usage=usage, ttft_ms=(self.first_out_ns - self.started_ns) // 1_000_000 if self.first_out_ns else None,
            duration_ms=(now - self.started_ns) // 1_000_000, fallback_from=self.fallback_from, complete=complete,
            estimated=estimated, cancelled=cancelled,
        )
        if c is not None:
            obs.client = c.protocol
        tried = self.attempts.tried if self.attempts is not None else self.fallback.tried if self.fallback else None
        if tried and len(tried) > 1:  # fallen back (Envoy retries or callouts): every attempt, in order
            obs.attempts = attempts_json(tried)
            if cfg.metrics:
                models = cfg.models
                record_failed_attempts(obs, [(m, models[m].cluster) for m, _ in tried[:-1] if m in models])
        publish(obs, cfg.metrics, cfg.ai_log in ("filter_state", "both"), cfg.ai_log in ("log", "both"))

    def _cache_body(self) -> bytes:
        if self.sse is not None:
            return self.cache_raw or (b"".join(self.cache_buf) if self.cache_buf else b"")
        c = self.collector
        return c.body() if c is not None and c.parts else b""

    def _reject(self, err: GatewayError) -> Action:
        self.send_local_response(err.status, err.body, err.headers, err.code)
        return Action.PAUSE

    @staticmethod
    def _too_large(cfg: Config) -> GatewayError:
        return GatewayError(413, f"request body exceeds {cfg.max_body_bytes} bytes", "request_too_large")
