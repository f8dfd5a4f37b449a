"""Measurement helpers for bench/run.py: wrk, /proc readings, plugin start-up log lines, CPU pinning."""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
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
    return WrkResult(
        rps=float(find(r"^Requests/sec:\s+([\d.]+)")),
        p50_ms=_ms(find(r"^\s+50%\s+(\S+)")),
        p99_ms=_ms(find(r"^\s+99%\s+(\S+)")),
        requests=int(find(r"^\s+(\d+) requests in")),
        non_2xx=int(find(r"Non-2xx or 3xx responses:\s+(\d+)", "0")),
        socket_errors=sum(int(g) for g in errors.groups()) if errors else 0,
        seconds=seconds,
    )


def wrk(url: str, seconds: float, connections: int = 16, threads: int = 1, cpus: set[int] | None = None) -> WrkResult:
    """One wrk run (``--latency``), optionally pinned to ``cpus``."""
    pre: Callable[[], None] | None = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url]
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
