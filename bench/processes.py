"""Starting the engine and simulators as separate processes, so a benchmark uses both cores."""

from __future__ import annotations

import asyncio
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent


class Process:
    """A child process started with ``python -m``; its output goes to a log file."""

    def __init__(self, name: str, args: list[str], workdir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = workdir / f"{name}.log"
        full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, env=full_env,
                cwd=workdir,
            )

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cpu_seconds(self, *, children: bool = False) -> float:
        """User + system CPU time used so far (Linux /proc), with ``children``: also that of
        the processes it started (the engine's mapping workers), while they run."""
        pids = [self.proc.pid]
        if children:
            pids += [pid for pid, parent in _parents().items() if parent == self.proc.pid]
        return sum(process_cpu(pid) for pid in pids)


def process_cpu(pid: int) -> float:
    """One process's user + system CPU seconds so far; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _parents() -> dict[int, int]:
    """Every live process's parent id."""
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            found[int(entry.name)] = int(fields[1])
    return found


async def wait_port(port: int, proc: Process, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not listen on {port}:\n{proc.tail()}")


async def metric_value(admin: str, token: str, name: str, labels: str = "") -> float:
    """Sum of a metric's samples whose label text contains ``labels``."""
    async with aiohttp.ClientSession() as s, s.get(
        f"{admin}/metrics", headers={"Authorization": f"Bearer {token}"}
    ) as r:
        text = await r.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name):len(name) + 1] in " {") and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def histogram(admin: str, token: str, name: str) -> list[tuple[float, int]]:
    """Cumulative (upper bound, count) pairs of a histogram, summed over its label sets."""
    async with aiohttp.ClientSession() as s, s.get(
        f"{admin}/metrics", headers={"Authorization": f"Bearer {token}"}
    ) as r:
        text = await r.text()
    buckets: dict[float, int] = {}
    for m in re.finditer(rf'^{name}_bucket{{.*le="([^"]+)"}} (\d+)$', text, re.M):
        bound = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
        buckets[bound] = buckets.get(bound, 0) + int(m.group(2))
    return sorted(buckets.items())


def histogram_quantile(buckets: list[tuple[float, int]], q: float) -> float:
    """Prometheus-style quantile with linear interpolation inside the bucket."""
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    rank = q * buckets[-1][1]
    prev_bound, prev_count = 0.0, 0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return prev_bound
            span = count - prev_count
            return prev_bound + (bound - prev_bound) * ((rank - prev_count) / span if span else 1)
        prev_bound, prev_count = bound, count
    return prev_bound


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def machine() -> str:
    """CPU model, cores, OS and Python: what a benchmark's numbers depend on."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")
