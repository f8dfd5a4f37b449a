"""Optional ``perf`` profile of Envoy during a load run: where its CPU goes (bench/run.py --profile).

Each sample is put in one bucket by its innermost frame and call stack:
``wasm`` (JIT code of the module: the Python interpreter and the plugin), ``hostcall``
(Envoy/libc code with a wasm frame below it: proxy_* imports and V8 runtime calls),
``envoy`` (Envoy code not called from wasm, including the wasm filter and V8 call-in glue),
``kernel`` (not called from wasm) and ``other``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BUCKETS = ("wasm", "hostcall", "envoy", "kernel", "other")


def available() -> bool:
    return shutil.which("perf") is not None


@contextmanager
def record(pid: int, seconds: float) -> Iterator[Path]:
    """Sample ``pid`` (all threads, with call stacks) for ``seconds`` while the body runs."""
    out = Path(tempfile.mkdtemp(prefix="bench-perf-")) / "perf.data"
    cmd = ["perf", "record", "-F", "499", "-g", "-p", str(pid), "-o", str(out), "--", "sleep", str(seconds)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield out
    finally:
        proc.wait(timeout=seconds + 30)


def _is_jit(dso: str) -> bool:
    return "perf-" in dso or "[JIT]" in dso


def shares(data: Path) -> dict[str, float]:
    """Fraction of samples per bucket (empty when perf recorded nothing)."""
    done = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,ip,dso"], capture_output=True, text=True)
    shutil.rmtree(data.parent, ignore_errors=True)
    counts: Counter[str] = Counter()
    stack: list[str] = []
    for line in [*done.stdout.splitlines(), ""]:
        if line.startswith(("\t", " ")) and line.strip():
            stack.append(line.split()[-1])
            continue
        if stack:
            leaf, below = stack[0], stack[1:]
            if _is_jit(leaf):
                counts["wasm"] += 1
            elif any(_is_jit(f) for f in below):
                counts["hostcall"] += 1
            elif "kernel" in leaf:
                counts["kernel"] += 1
            elif "envoy" in leaf:
                counts["envoy"] += 1
            else:
                counts["other"] += 1
        stack = []
    total = sum(counts.values())
    return {b: counts[b] / total for b in BUCKETS} if total else {}
