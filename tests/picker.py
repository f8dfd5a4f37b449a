"""Helpers for endpoint-picker tests: configs, vLLM metrics pages, scrape rounds."""

from __future__ import annotations

from typing import Any

from proxywasm.testing import Host, Stream

from .gateway import chat, chat_body

EPS = ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"]
DEST = "x-gateway-destination-endpoint"


def config(endpoints: list[str] | None = None, models: list[dict[str, Any]] | None = None,
           **picker: Any) -> dict[str, Any]:
    return {"models": [
        {"name": "llama", "cluster": "pool", "endpoint_picker": {"endpoints": endpoints or EPS, **picker}},
        *(models or []),
    ]}


def page(waiting: float = 0, running: float = 0, kv: float | None = None, model: str = "llama",
         lora: tuple[int, str, str] | None = None, itl: tuple[float, int] | None = None) -> bytes:
    """A vLLM-like /metrics page (with the HELP/TYPE lines and a histogram, as vLLM has)."""
    m = f'model_name="{model}"'
    kv = running / 8 if kv is None else kv
    lines = [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{{{m}}} {float(running)}",
        "# TYPE vllm:num_requests_waiting gauge",
        f"vllm:num_requests_waiting{{{m}}} {float(waiting)}",
        "# TYPE vllm:kv_cache_usage_perc gauge",
        f"vllm:kv_cache_usage_perc{{{m}}} {kv!r}",
        "# TYPE vllm:e2e_request_latency_seconds histogram",
        *(f'vllm:e2e_request_latency_seconds_bucket{{le="{b}",{m}}} 3.0' for b in (0.3, 0.5, 1.0, "+Inf")),
    ]
    if itl is not None:  # (sum in seconds, count) of vllm:time_per_output_token_seconds
        lines += ["# TYPE vllm:time_per_output_token_seconds histogram",
                  f'vllm:time_per_output_token_seconds_bucket{{{m},le="+Inf"}} {float(itl[1])}',
                  f"vllm:time_per_output_token_seconds_count{{{m}}} {float(itl[1])}",
                  f"vllm:time_per_output_token_seconds_sum{{{m}}} {itl[0]!r}"]
    if lora is not None:
        lines += ["# TYPE vllm:lora_requests_info gauge",
                  f'vllm:lora_requests_info{{max_lora="{lora[0]}",running_lora_adapters="{lora[1]}",'
                  f'waiting_lora_adapters="{lora[2]}"}} 1.7e9']
    return ("\n".join(lines) + "\n").encode()


def scrapes(h: Host) -> dict[str, Any]:
    """The pending scrape callouts, by endpoint."""
    return {c.header(DEST): c for c in h.callouts if c.header(":path") == "/metrics"}


def scrape_round(h: Host, pages: dict[str, bytes | int | None], advance_ms: int = 200) -> None:
    """Advance the clock, tick, and answer each endpoint's scrape: bytes = 200 with that page, an int = that
    status with no body, None = no answer (connection refused / timeout); endpoints not named stay pending."""
    h.advance(advance_ms)
    h.tick()
    for ep, call in scrapes(h).items():
        if ep not in pages:
            continue
        answer = pages[ep]
        if answer is None:
            h.fail_callout(call.token)
        elif isinstance(answer, int):
            h.respond_callout(call.token, answer)
        else:
            h.respond_callout(call.token, 200, body=answer)


def picked(h: Host, model: str = "llama", headers: dict[str, str] | None = None, **body: Any) -> str | None:
    s = chat(h, chat_body(model, **body), headers)
    assert s.local_response is None, s.local_response
    return s.request_header(DEST)


def send(h: Host, model: str = "llama", headers: dict[str, str] | None = None, **body: Any) -> Stream:
    return chat(h, chat_body(model, **body), headers)
