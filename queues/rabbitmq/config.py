"""``[queue] backend = "rabbitmq"``: where the broker is and how the queues are shaped."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator
from yarl import URL

from engine.settings import HostPort, Model, Secret, split_host_port

if TYPE_CHECKING:
    from queues.rabbitmq.backend import RabbitQueue


class RabbitQueueConfig(Model):
    """The RabbitMQ queue backend (several engines sharing one broker).

    Attributes:
        host: the broker's AMQP ``host:port``.
        vhost: the virtual host; one per deployment keeps environments apart.
        username / password: credentials; the password by reference (``"${ENV}"``), or
            unset for the broker's local ``guest`` account.
        tls: AMQPS instead of plain AMQP.
        prefix: first part of every queue and exchange name; engines that share the queues
            share the prefix.
        queue_type: ``quorum`` (replicated, the default) or ``classic``. Ordered
            destinations always use classic queues (see docs/operations.md).
        dead_letter_strategy: how quorum queues move messages the broker dead-letters
            (retries leaving their delay queue, messages past the delivery limit):
            ``at-least-once`` (confirmed inside the broker, the default) or
            ``at-most-once`` (the broker's older mode, which may drop a message whose
            target queue is unavailable at that moment).
        delivery_limit: times a message may be handed out and never settled (its consumer
            crashed) before it is dead-lettered: the guard against a message that kills
            the engine each time it is processed.
        max_length: messages a work queue holds before the broker refuses more, which makes
            sources push back (MLLP AE, HTTP 503). ``0`` for no limit.
        min_prefetch: every unordered consumer takes at least this many unsettled messages.
        confirm_window: publishes awaiting the broker's confirm at once; more wait.
        publish_timeout: seconds before an unconfirmed publish counts as failed.
        delay_tiers: TTLs (seconds) of the delay queues that carry retries.
        heartbeat: AMQP heartbeat seconds (how fast a dead broker is noticed).
        reconnect_interval: seconds between reconnection attempts.
    """

    backend: Literal["rabbitmq"]
    host: HostPort = "127.0.0.1:5672"
    vhost: str = "/"
    username: str = "guest"
    password: Secret | None = None
    tls: bool = False
    prefix: str = Field(default="hisbridge", pattern=r"^[A-Za-z0-9_.-]+$", max_length=100)
    queue_type: Literal["quorum", "classic"] = "quorum"
    dead_letter_strategy: Literal["at-least-once", "at-most-once"] = "at-least-once"
    delivery_limit: int = Field(default=20, ge=1, le=10_000)
    max_length: int = Field(default=1_000_000, ge=0)
    min_prefetch: int = Field(default=100, ge=1, le=65_535)
    confirm_window: int = Field(default=1000, ge=1, le=100_000)
    publish_timeout: float = Field(default=10.0, gt=0, le=300)
    delay_tiers: list[float] = Field(default=[1.0, 5.0, 30.0, 300.0, 3600.0], min_length=1)
    heartbeat: int = Field(default=30, ge=0, le=600)
    reconnect_interval: float = Field(default=2.0, gt=0, le=300)

    @field_validator("delay_tiers")
    @classmethod
    def _tiers(cls, tiers: list[float]) -> list[float]:
        if any(t < 0.05 or t > 86_400 for t in tiers):
            raise ValueError("each delay tier must be between 0.05 and 86400 seconds")
        return sorted(set(tiers))

    def url(self) -> URL:
        """The AMQP URL, password included (never log it: use ``display_url``)."""
        host, port = split_host_port(self.host)
        return URL.build(
            scheme="amqps" if self.tls else "amqp",
            host=host,
            port=port,
            user=self.username,
            password=self.password.get() if self.password is not None else "guest",
            path="/" + self.vhost,
            query={"heartbeat": str(self.heartbeat)},
        )

    def display_url(self) -> str:
        scheme = "amqps" if self.tls else "amqp"
        return f"{scheme}://{self.username}@{self.host}/{self.vhost.lstrip('/') or ''}"

    def build(self) -> RabbitQueue:
        from queues.rabbitmq.backend import RabbitQueue

        return RabbitQueue(self)
