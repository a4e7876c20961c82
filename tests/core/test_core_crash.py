"""kill -9 of the engine in the middle of a stream loses no acknowledged message."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine.hl7 import parse
from simulators.his import HisReceiver, HisSender, traffic
from tests.conftest import REPO, free_port, wait_for

pytestmark = pytest.mark.slow


def serve(config: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with (config.parent / "engine.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "serve", "--config", str(config)],
            env=env, stdout=subprocess.DEVNULL, stderr=log,
        )


def engine_log(config: Path) -> str:
    return (config.parent / "engine.log").read_text(errors="replace")[-3000:]


async def wait_listening(port: int, proc: subprocess.Popen[bytes], config: Path) -> None:
    for _ in range(200):
        if proc.poll() is not None:
            raise AssertionError(f"engine exited: {engine_log(config)}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError("engine did not start listening")


async def test_kill_9_mid_stream_loses_no_acked_message(tmp_path: Path) -> None:
    receiver = HisReceiver()
    await receiver.start()
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(f"""
[store]
path = "{tmp_path / 'store.db'}"
[admin]
enabled = false
[retry]
initial_delay = 0.05
max_delay = 0.5
max_attempts = 100
[[channels]]
name = "his"
source = {{ type = "mllp", listen = "127.0.0.1:{port}" }}
[[channels.destinations]]
name = "cdr"
type = "mllp"
host = "127.0.0.1"
port = {receiver.port}
concurrency = 4
""")
    messages = list(itertools.islice(traffic(seed=42), 5000))
    ids = [parse(m.encode()).control_id for m in messages]
    assert len(set(ids)) == 5000

    acked: set[str] = set()
    proc = serve(config)
    await wait_listening(port, proc, config)
    sender = HisSender("127.0.0.1", port, connections=4, ack_timeout=5)

    def on_ack(cid: str, code: str, latency: float) -> None:
        if code == "AA":
            acked.add(cid)

    sending = asyncio.create_task(sender.send(messages, on_ack=on_ack))
    await wait_for(lambda: len(acked) >= 1500, timeout=60)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    sending.cancel()
    await asyncio.gather(sending, return_exceptions=True)
    acked_before_crash = set(acked)
    assert 1500 <= len(acked_before_crash) < 5000

    proc = serve(config)
    try:
        await wait_listening(port, proc, config)
        remaining = [m for m, cid in zip(messages, ids, strict=True) if cid not in acked]
        report = await HisSender("127.0.0.1", port, connections=4).send(remaining,
                                                                          on_ack=on_ack)
        assert report.count("AA") == len(remaining)
        # Every message acknowledged before the crash reaches the destination.
        await wait_for(lambda: acked_before_crash <= set(receiver.received), timeout=60)
        await wait_for(lambda: set(ids) <= set(receiver.received), timeout=60)
        duplicates = len(receiver.received) - len(set(receiver.received))
        # At-least-once: only deliveries in flight at the crash may repeat.
        assert duplicates <= 8
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        finally:
            await receiver.stop()
    assert proc.returncode == 0, engine_log(config)
