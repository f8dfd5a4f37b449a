"""``MockServer``: one served model on a loopback port, answering from a background thread; ``serve()``."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any

from .engine import INSTANT, Engine, EngineConfig, Ticket, _Instant
from .faults import HEADER_FAULTS, Fault
from .generation import MAX_MODEL_LEN, Generation
from .handler import _HTTPServer
from .metrics import DEFAULT_MAX_NUM_SEQS, Metrics
from .recording import MAX_RECORDED, Recorded


class MockServer:
    """One served model on a loopback port, answering from a background thread. Use ``serve()`` to create one."""

    def __init__(self, model: str, port: int = 0, api_keys: tuple[str, ...] = (), *, host: str = "127.0.0.1",
                 max_num_seqs: int = DEFAULT_MAX_NUM_SEQS, token_delay_ms: int = 0,
                 max_model_len: int = MAX_MODEL_LEN, keepalive_timeout: float | None = None,
                 load_model: bool = False, lora_modules: Iterable[str] = (), **engine_options: Any) -> None:
        """``load_model`` turns on the engine load model; ``engine_options`` are ``EngineConfig`` fields
        (``kv_capacity_tokens=...``). ``lora_modules``: adapters ``model`` may name, ``name`` or ``name=path``."""
        if not ipaddress.ip_address(host).is_loopback or ipaddress.ip_address(host).version != 4:
            raise ValueError(f"mock-vllm listens on IPv4 loopback only, not {host!r}")
        self.model = model
        self.api_keys = tuple(api_keys)
        self.max_model_len = max_model_len
        self.token_delay_ms = token_delay_ms
        self.keepalive_timeout = keepalive_timeout
        self.lora_modules = parse_lora_modules(lora_modules)
        self.engine_config = EngineConfig(max_num_seqs=max_num_seqs, **engine_options)
        self.metrics = Metrics(model, max_num_seqs, max_loras=self.engine_config.max_loras,
                               lora=bool(self.lora_modules), prefix_cache=load_model and self.engine_config.prefix_cache)
        self.engine = Engine(self.engine_config, self.metrics, model) if load_model else None
        self.created = int(time.time())
        self._lock = threading.Lock()
        self._requests: deque[Recorded] = deque(maxlen=MAX_RECORDED)
        self._request_count = 0
        self._fault: Fault | None = None
        self._fault_left: int | None = None
        self._httpd = _HTTPServer((host, port), self)
        self.host = host
        self.port: int = self._httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"mock-vllm-{model}", daemon=True)
        self._thread.start()

    def __enter__(self) -> MockServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"MockServer({self.model!r}, url={self.url!r})"

    def shutdown(self) -> None:
        """Stop accepting, drop open keep-alive/streaming connections, release the port."""
        if self.engine:
            self.engine.stop()
        self._httpd.shutdown()
        self._httpd.close_all()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    # ---- recorded requests

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        """Requests received since the last ``clear_requests()`` (can exceed the 1000 kept)."""
        with self._lock:
            return self._request_count

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()
            self._request_count = 0

    def _record(self, rec: Recorded) -> None:
        with self._lock:
            self._requests.append(rec)
            self._request_count += 1

    # ---- faults

    def set_fault(self, **keys: Any) -> Fault:
        """Break every following completion request (or only the next ``fail_count``). Keys: see ``Fault``."""
        fault = Fault.parse(keys)
        with self._lock:
            self._fault = fault
            self._fault_left = fault.fail_count
        return fault

    def clear_fault(self) -> None:
        with self._lock:
            self._fault = None
            self._fault_left = None

    @property
    def fault(self) -> Fault | None:
        with self._lock:
            return self._fault

    def fault_doc(self) -> dict[str, Any]:
        with self._lock:
            return {"fault": self._fault.to_json() if self._fault else None, "remaining": self._fault_left}

    def _take_fault(self, headers: Mapping[str, str]) -> Fault:
        given = {key: headers[h] for h, key in HEADER_FAULTS.items() if h in headers}
        overrides = Fault.parse(given)  # validates before consuming a fail_count
        with self._lock:
            base = self._fault or Fault()
            if self._fault_left is not None:
                self._fault_left -= 1
                if self._fault_left <= 0:
                    self._fault, self._fault_left = None, None
        return replace(base, **{key: getattr(overrides, key) for key in given})

    # ---- the engine

    @contextlib.contextmanager
    def admit(self, gen: Generation) -> Iterator[Ticket | _Instant]:
        """Run one request in the engine: yields a ticket to wait on for its tokens, aborts it on early exit."""
        if self.engine is None:
            with self.metrics.slot(gen.adapter):
                yield INSTANT
            return
        ticket = self.engine.submit(gen.prompt_tokens, len(gen.tokens), gen.adapter, gen.prompt_text)
        try:
            yield ticket
        finally:
            self.engine.release(ticket)

    def engine_doc(self) -> dict[str, Any]:
        if self.engine:
            return self.engine.doc()
        return {"load_model": False, "config": self.engine_config.to_json()}

    # ---- documents

    def models_doc(self) -> dict[str, Any]:
        cards = [(self.model, self.model, None, self.max_model_len)]
        cards += [(name, path, self.model, None) for name, path in self.lora_modules.items()]
        return {"object": "list", "data": [{
            "id": name, "object": "model", "created": self.created, "owned_by": "vllm", "root": root,
            "parent": parent, "max_model_len": max_len,
            "permission": [{"id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission",
                            "created": self.created, "allow_create_engine": False, "allow_sampling": True,
                            "allow_logprobs": True, "allow_search_indices": False, "allow_view": True,
                            "allow_fine_tuning": False, "organization": "*", "group": None,
                            "is_blocking": False}]} for name, root, parent, max_len in cards]}


def parse_lora_modules(specs: Iterable[str]) -> dict[str, str]:
    """vLLM's ``--lora-modules`` values: ``name``, ``name=path`` or ``{"name": ..., "path": ...}`` -> {name: path}."""
    out: dict[str, str] = {}
    for spec in specs:
        if spec.lstrip().startswith("{"):
            doc = json.loads(spec)
            name, path = str(doc["name"]), str(doc.get("path") or f"/adapters/{doc['name']}")
        else:
            name, _, path = spec.partition("=")
            path = path or f"/adapters/{name}"
        if not name:
            raise ValueError(f"bad --lora-modules entry {spec!r}")
        out[name] = path
    return out


def serve(model: str, port: int = 0, api_keys: tuple[str, ...] = (), **options: Any) -> MockServer:
    """Start an in-process mock vLLM for ``model`` on 127.0.0.1 (``port=0``: a free one). Options: see MockServer."""
    return MockServer(model, port, api_keys, **options)
