"""Measurement helpers for bench/run.py and bench/ai/run.py: wrk, /proc readings, plugin start-up log lines
(VM start, linear memory), RSS per VM, CPU pinning."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

READY_RE = re.compile(r"\]\[(\d+)\]\[\w+\]\[wasm\].*python: ready in ([\d.]+) ms, linear memory (\d+) KiB")
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def ensure_wrk() -> str:
    """Path of wrk; install the Debian package (as root) when it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit("bench: wrk is not installed and this is not root: run `apt-get install -y wrk` first")
    print("bench: wrk not found, installing it with apt-get ...", flush=True)
    for cmd in (["apt-get", "install", "-y", "wrk"], ["apt-get", "update"], ["apt-get", "install", "-y", "wrk"]):
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if done.returncode == 0 and shutil.which("wrk"):
            break
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("bench: could not install wrk with apt-get (`apt-get update && apt-get install -y wrk`); "
                         f"last output:\n{done.stdout[-800:]}{done.stderr[-800:]}")
    return found


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    seconds: float
    timeouts: int = 0
    # Only with a script that prints them (bench/ai/status.lua): responses by status, and 2xx answers whose
    # body lacked what the workload expects (usage, or the SSE stream's [DONE]).
    statuses: dict[str, int] = field(default_factory=dict)
    bad_bodies: int = 0

    @property
    def errors(self) -> int:
        """Every failed request wrk saw: non-2xx/3xx answers, socket errors (timeouts included), bad bodies."""
        return self.non_2xx + self.socket_errors + self.bad_bodies

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"unexpected wrk time {text!r}")
    return float(m.group(1)) * _UNIT_MS[m.group(2)]


def parse_wrk(out: str, seconds: float) -> WrkResult:
    def find(pattern: str, default: str | None = None) -> str:
        m = re.search(pattern, out, re.M)
        if m:
            return m.group(1)
        if default is None:
            raise ValueError(f"wrk output has no {pattern!r}:\n{out}")
        return default

    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    statuses = re.search(r"^bench-statuses:(.*)$", out, re.M)
    return WrkResult(
        rps=float(find(r"^Requests/sec:\s+([\d.]+)")),
        p50_ms=_ms(find(r"^\s+50%\s+(\S+)")),
        p99_ms=_ms(find(r"^\s+99%\s+(\S+)")),
        requests=int(find(r"^\s+(\d+) requests in")),
        non_2xx=int(find(r"Non-2xx or 3xx responses:\s+(\d+)", "0")),
        socket_errors=sum(int(g) for g in errors.groups()) if errors else 0,
        seconds=seconds,
        timeouts=int(errors.group(4)) if errors else 0,
        statuses={k: int(v) for k, v in (kv.split("=") for kv in statuses.group(1).split())} if statuses else {},
        bad_bodies=int(find(r"^bench-bad-bodies: (\d+)", "0")),
    )


def wrk(url: str, seconds: float, connections: int = 16, threads: int = 1, cpus: set[int] | None = None) -> WrkResult:
    """One wrk run (``--latency``), optionally pinned to ``cpus``."""
    pre: Callable[[], None] | None = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, preexec_fn=pre)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout, seconds)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the whole process (all threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_cpu_seconds() -> float:
    """CPU time spent by the whole machine (all CPUs, every process) so far, from /proc/stat."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """CPU time of finished child processes (wrk runs) so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def pin(pid: int, cpus: set[int]) -> None:
    """Restrict every thread of ``pid`` to ``cpus``."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:
            pass


@dataclass
class ReadyLine:
    tid: int
    ms: float
    memory_kib: int


def ready_lines(read_log: Callable[[], str], at_least: int, timeout: float = 5.0) -> list[ReadyLine]:
    """The plugin's ``python: ready in`` lines, once ``at_least`` are there and no more arrive for 0.3 s."""
    deadline = time.monotonic() + timeout
    last: list[ReadyLine] = []
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        found = [ReadyLine(int(m[1]), float(m[2]), int(m[3])) for m in READY_RE.finditer(read_log())]
        if len(found) != len(last):
            last, stable_since = found, time.monotonic()
        elif len(found) >= at_least and time.monotonic() - stable_since > 0.3:
            break
        time.sleep(0.05)
    return last


def rss_per_extra_vm(plugin: tuple[int, int], base: tuple[int, int], extra_vms: int) -> float:
    """RSS (KiB) one more plugin VM costs: ((plugin cN - plugin c1) - (no-plugin cN - no-plugin c1)) / extra VMs,
    from (c1, cN) RSS pairs of Envoy with and without the plugin."""
    return ((plugin[1] - plugin[0]) - (base[1] - base[0])) / extra_vms


def vm_start_in_envoy(read_log: Callable[[], str], main_pid: int, concurrency: int) -> dict[str, Any]:
    """VM start times and linear memory from the ``python: ready in`` lines of an Envoy just started with
    ``concurrency`` workers and the plugin (two VMs on the main thread, one per worker)."""
    lines = ready_lines(read_log, at_least=concurrency + 1)
    if not lines:
        raise RuntimeError("no 'python: ready in' lines in the Envoy log")
    ms = [x.ms for x in lines]
    return {"concurrency": concurrency, "median_ms": statistics.median(ms), "max_ms": max(ms),
            "linear_memory_kib": max(x.memory_kib for x in lines),
            "vms": [{"thread": "main" if x.tid == main_pid else "worker", "ms": x.ms, "memory_kib": x.memory_kib}
                    for x in lines]}


def vm_start_wasmtime(module: Path, config: str, runs: int = 5) -> dict[str, Any]:
    """Instantiate + start the module with ``config`` in wasmtime (this process), ``runs`` times."""
    from proxywasm.testing.wasm import WasmHost, load_module

    t0 = time.perf_counter()
    load_module(module)  # compiled once (cached in .cache/wasmtime), outside the timing
    load_s = time.perf_counter() - t0
    wall, inside, memory = [], [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        host = WasmHost(module)
        if not host.start(config):
            raise RuntimeError(f"plugin did not start in wasmtime: {host.logs}")
        wall.append((time.perf_counter() - t0) * 1000)
        memory = host.memory_size() // 1024
        found = [float(x[1]) for _, msg in host.logs if (x := re.search(r"ready in ([\d.]+) ms", msg))]
        inside.extend(found[:1])
    return {"runs": runs, "median_ms": statistics.median(wall), "all_ms": wall, "module_load_s": load_s,
            "ready_in_median_ms": statistics.median(inside) if inside else None, "linear_memory_kib": memory}


def wait_idle(pids: Iterable[int], timeout: float = 10.0, window: float = 0.3, below: float = 0.1) -> float:
    """Wait until ``pids`` together use less than ``below`` of a CPU over ``window`` s (requests a load run left
    in flight are done), at most ``timeout`` s; returns the seconds waited."""
    pids = list(pids)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        c0 = sum(cpu_seconds(p) for p in pids)
        time.sleep(window)
        if (sum(cpu_seconds(p) for p in pids) - c0) / window < below:
            break
    return time.monotonic() - t0


def envoy_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    return (re.findall(r"/(\d+\.\d+\.\d+)/", out) or ["?"])[0]


def noise_notes(label: str, own_util: float, wrk_util: float, other_util: float, who: str = "the gateway") -> list[str]:
    """Warnings for one measured run: other load on the machine, or a gateway that was not CPU-bound."""
    out = []
    if other_util > 0.15:
        out.append(f"{label}: other processes used {other_util:.2f} CPUs during the run: req/s and latency are "
                   "noisy (the machine is shared), CPU µs/req much less")
    if own_util < 0.85:
        out.append(f"{label}: {who} used only {own_util:.0%} of its CPU: it was not the only bottleneck "
                   f"(wrk used {wrk_util:.0%}, other processes {other_util:.0%})")
    return out


def write_results(out: Path, name: str, data: dict[str, Any], md: str) -> None:
    """``out``/``name``.json (every raw number) and .md (the tables), then the tables on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / f"{name}.md").write_text(md + "\n")
    print(md)
