"""Helpers for the queue tests: the broker under test, a delivery taker, a TCP proxy."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from queues.contract import Consumer, Delivery
from queues.rabbitmq.admin import drop_topology
from queues.rabbitmq.config import RabbitQueueConfig

BROKER = os.environ.get("HISBRIDGE_RABBITMQ", "127.0.0.1:5672")
REPO = Path(__file__).resolve().parents[2]


def broker_reachable(host_port: str = BROKER, timeout: float = 2.0) -> bool:
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def rabbitmqctl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def can_administer() -> bool:
    if shutil.which("rabbitmqctl") is None:
        return False
    return rabbitmqctl("list_vhosts", timeout=30).returncode == 0


@dataclass(frozen=True)
class Broker:
    host: str  # host:port
    vhost: str
    administered: bool  # rabbitmqctl works (vhosts, stop_app/start_app)

    def config(self, prefix: str, **overrides: Any) -> RabbitQueueConfig:
        fields: dict[str, Any] = {
            "backend": "rabbitmq", "host": self.host, "vhost": self.vhost, "prefix": prefix,
            "reconnect_interval": 0.5, "publish_timeout": 5.0,
        }
        fields.update(overrides)
        return RabbitQueueConfig.model_validate(fields)

    def url(self) -> str:
        vhost = "%2F" if self.vhost == "/" else self.vhost
        return f"amqp://guest:guest@{self.host}/{vhost}"

    def toml(self, prefix: str, **overrides: object) -> str:
        """A ``[queue]`` table for config files (engines in this process or subprocesses)."""
        fields: dict[str, object] = {"backend": "rabbitmq", "host": self.host,
                                     "vhost": self.vhost, "prefix": prefix,
                                     "reconnect_interval": 0.5}
        fields.update(overrides)
        lines = ["[queue]"]
        for key, value in fields.items():
            lines.append(f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value}")
        return "\n".join(lines) + "\n"


def wait_broker_up(timeout: float = 60) -> None:
    """Make sure the broker app runs (after ``stop_app``) and can dead-letter again.

    RabbitMQ 3.10 can come back from ``stop_app``/``start_app`` under load without the
    supervisor of at-least-once dead-letter workers; quorum queues using it then fail to
    start (INTERNAL_ERROR) until the node is restarted. Restart it here rather than leave a
    broken broker to the next tests (see docs/operations.md, "Known broker issues").
    """
    if shutil.which("rabbitmqctl") is None:
        return
    rabbitmqctl("start_app", timeout=timeout)  # no-op when running
    rabbitmqctl("await_startup", timeout=timeout)
    probe = rabbitmqctl("eval", "whereis(rabbit_fifo_dlx_sup).", timeout=timeout)
    if probe.returncode == 0 and probe.stdout.strip() == "undefined":
        rabbitmqctl("stop", timeout=timeout)
        subprocess.run(["rabbitmq-server", "-detached"], check=False, timeout=timeout)
        deadline = time.monotonic() + timeout
        while rabbitmqctl("await_startup", timeout=timeout).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("RabbitMQ did not come back after a restart")
            time.sleep(1)


async def delete_topology(broker: Broker, prefix: str, logical: list[str]) -> None:
    """Delete every queue behind ``logical`` under ``prefix``, and the dead-letter exchange."""
    await drop_topology(broker.config(prefix), logical)


class Taker:
    """Takes deliveries from a consumer without ever cancelling a pending ``get``.

    A ``get`` that timed out stays pending and is what the next ``next`` waits for, so a
    "nothing arrives within 0.3 s" check never drops the delivery that arrives later.
    """

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self._pending: asyncio.Task[Delivery] | None = None

    def _task(self) -> asyncio.Task[Delivery]:
        if self._pending is None:
            self._pending = asyncio.ensure_future(self.consumer.get())
        return self._pending

    async def next(self, within: float = 10.0) -> Delivery:
        task = self._task()
        done, _ = await asyncio.wait({task}, timeout=within)
        if not done:
            raise AssertionError(f"no delivery within {within}s")
        self._pending = None
        return task.result()

    async def none_within(self, seconds: float) -> None:
        task = self._task()
        done, _ = await asyncio.wait({task}, timeout=seconds)
        if done:
            raise AssertionError(f"unexpected delivery: {task.result().envelope.message_id}")

    async def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            with contextlib.suppress(BaseException):
                await self._pending
        await self.consumer.close()


class TcpProxy:
    """A TCP relay to the broker that a test can cut and restore: the broker "goes away"
    for this test's engine only, while other tests keep using it."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Stop listening and drop every relayed connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def restore(self) -> None:
        await self.start()

    def hold_replies(self) -> None:
        """Keep the connections open but stop passing the broker's frames on (a stalled
        broker: publishes get no confirm)."""
        self._flowing.clear()

    def release_replies(self) -> None:
        self._flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for src, dst, held in ((reader, up_writer, False), (up_reader, writer, True)):
            task = asyncio.create_task(self._pipe(src, dst, held))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    held: bool) -> None:
        try:
            while data := await src.read(65536):
                if held:
                    await self._flowing.wait()
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.transport.abort()
            self._writers.discard(dst)


def serve(config: Path) -> subprocess.Popen[bytes]:
    """``hisbridge serve`` as a subprocess; its stderr goes to ``engine.log`` beside the config."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with (config.parent / "engine.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "serve", "--config", str(config)],
            env=env, stdout=subprocess.DEVNULL, stderr=log,
        )


def engine_log(config: Path) -> str:
    return (config.parent / "engine.log").read_text(errors="replace")[-3000:]


async def wait_listening(port: int, proc: subprocess.Popen[bytes], config: Path,
                         within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"engine exited: {engine_log(config)}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError("engine did not start listening")


async def stop(proc: subprocess.Popen[bytes], config: Path) -> None:
    """SIGTERM, wait for a clean exit (code 0), without blocking the event loop."""
    proc.send_signal(signal.SIGTERM)
    for _ in range(400):
        if proc.poll() is not None:
            break
        await asyncio.sleep(0.05)
    else:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, engine_log(config)
