"""How close the gateway's usage estimate is to the true counts: the ratio estimated / true, per workload.

    .venv/bin/python bench/ai/estimate_accuracy.py

Each workload (the demo's requests and bench/ai's W1-W3 bodies) goes through the real Envoy with the gateway
(e2e/ai_stack.py) to the mock vLLM twice: as usual (the server's usage: the truth) and with the mock ignoring
``include_usage`` (``x-mock-no-usage``: the gateway estimates). The AI log of both gives the ratio. The mock
streams one event per token, as vLLM does; its tokens are words (README "Usage estimates" for the method).
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for _p in (REPO, REPO / "plugin", REPO / "build"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench.ai.instructions import PAD  # noqa: E402
from e2e.ai_stack import QWEN, running_ai_stack  # noqa: E402

STORY = "tell me a story about a gateway that counted tokens for every model it served"
WORKLOADS = {  # name: (messages, stream, max_tokens, ignore_eos)
    "demo chat (hello)": ([{"role": "user", "content": "hello"}], False, None, False),
    "demo stream (story)": ([{"role": "user", "content": "tell me a story"}], True, None, False),
    "stream, long answer": ([{"role": "user", "content": STORY}], True, 200, True),
    "W1 (system + 1.8 KB user)": ([{"role": "system", "content": "You are a helpful assistant."},
                                   {"role": "user", "content": PAD * 68}], False, 256, True),
    "W2 (stream, 216 B user)": ([{"role": "user", "content": PAD * 8}], True, 200, True),
    "W3 (64 KB user)": ([{"role": "user", "content": PAD * 140}], False, 256, True),  # the mock's 4096-token limit
}


def main() -> None:
    rows = []
    with running_ai_stack() as stack:
        for name, (messages, stream, max_tokens, ignore_eos) in WORKLOADS.items():
            body = {"model": QWEN, "messages": messages, "stream": stream,
                    **({"max_tokens": max_tokens} if max_tokens else {}), **({"ignore_eos": True} if ignore_eos else {})}
            logs = {}
            for how, extra in (("true", {}), ("estimated", {"x-mock-no-usage": "1"})):
                tid = uuid.uuid4().hex
                r = stack.post("/v1/chat/completions", body, {"x-test-id": tid, **extra})
                assert r.status == 200, r
                logs[how] = json.loads(stack.wait_ai_log({tid})[tid])
            t, e = logs["true"], logs["estimated"]
            assert (t["usage_source"], e["usage_source"]) == ("server", "estimated"), (t, e)
            rows.append((name, t["input_tokens"], e["input_tokens"], t["output_tokens"], e["output_tokens"]))
    print("| workload | input true | input est. | ratio | output true | output est. | ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, ti, ei, to, eo in rows:
        print(f"| {name} | {ti} | {ei} | {ei / ti:.2f} | {to} | {eo} | {eo / to:.2f} |")


if __name__ == "__main__":
    main()
