"""Counters, gauges and histograms in the Prometheus text format.

A few dozen series do not justify a dependency: this is a dict of floats per metric family,
updated on the event loop (no locks needed) and rendered on scrape.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable

Labels = tuple[tuple[str, str], ...]

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
                   0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _labels(kw: dict[str, str]) -> Labels:
    return tuple(sorted(kw.items()))


def _fmt(labels: Labels, extra: Iterable[tuple[str, str]] = ()) -> str:
    items = list(labels) + list(extra)
    if not items:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in items)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Counter:
    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self.values: dict[Labels, float] = defaultdict(float)

    def inc(self, amount: float = 1.0, /, **labels: str) -> None:
        self.values[_labels(labels)] += amount

    def get(self, **labels: str) -> float:
        return self.values.get(_labels(labels), 0.0)

    def total(self, **match: str) -> float:
        want = set(match.items())
        return sum(v for k, v in self.values.items() if want <= set(k))

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        lines += [f"{self.name}{_fmt(k)} {v:g}" for k, v in sorted(self.values.items())]
        return lines


class Gauge:
    """A gauge whose values are read on scrape from a callback."""

    def __init__(self, name: str, help_text: str,
                 read: Callable[[], dict[Labels, float]]) -> None:
        self.name, self.help, self.read = name, help_text, read

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge"]
        lines += [f"{self.name}{_fmt(k)} {v:g}" for k, v in sorted(self.read().items())]
        return lines


class Histogram:
    def __init__(self, name: str, help_text: str,
                 buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.name, self.help, self.buckets = name, help_text, buckets
        self.counts: dict[Labels, list[int]] = {}
        self.sums: dict[Labels, float] = defaultdict(float)

    def observe(self, value: float, **labels: str) -> None:
        key = _labels(labels)
        counts = self.counts.get(key)
        if counts is None:
            counts = self.counts[key] = [0] * (len(self.buckets) + 1)
        counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sums[key] += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, counts in sorted(self.counts.items()):
            running = 0
            for bound, n in zip(self.buckets, counts, strict=False):
                running += n
                lines.append(f"{self.name}_bucket{_fmt(key, [('le', f'{bound:g}')])} {running}")
            running += counts[-1]
            lines.append(f"{self.name}_bucket{_fmt(key, [('le', '+Inf')])} {running}")
            lines.append(f"{self.name}_sum{_fmt(key)} {self.sums[key]:.6f}")
            lines.append(f"{self.name}_count{_fmt(key)} {running}")
        return lines


class Metrics:
    """Every metric the engine exports; one instance per engine."""

    def __init__(self) -> None:
        self.received = Counter("hisbridge_messages_received_total",
                                "Messages accepted from sources and durably stored.")
        self.duplicates = Counter("hisbridge_messages_duplicate_total",
                                  "Messages recognised as duplicates and acknowledged again.")
        self.refused = Counter("hisbridge_messages_refused_total",
                               "Messages the engine could not take (answered AE/503).")
        self.key_reused = Counter(
            "hisbridge_messages_key_reused_total",
            "HL7 messages refused (AR 205, HTTP 409): their dedup key belongs to an earlier,"
            " different message.")
        self.filtered = Counter("hisbridge_messages_filtered_total",
                                "Messages stopped by a channel filter.")
        self.mapped = Counter("hisbridge_messages_mapped_total", "Messages mapped and fanned out.")
        self.mapping_errors = Counter("hisbridge_mapping_errors_total",
                                      "Messages dead-lettered because they could not be mapped.")
        self.sent = Counter("hisbridge_deliveries_sent_total",
                            "Deliveries acknowledged by their destination.")
        self.retried = Counter("hisbridge_deliveries_retried_total",
                               "Delivery attempts that failed and were scheduled again.")
        self.dead_lettered = Counter("hisbridge_deliveries_dead_lettered_total",
                                     "Deliveries moved to dead letters.")
        self.resends_skipped = Counter(
            "hisbridge_deliveries_resend_skipped_total",
            "Redelivered messages not sent again: the store shows the destination took them.")
        self.ingest_latency = Histogram("hisbridge_ingest_seconds",
                                        "Time from receipt to durable commit (ACK latency).")
        self.delivery_latency = Histogram("hisbridge_end_to_end_seconds",
                                          "Time from receipt to destination acknowledgement.")
        self.send_latency = Histogram("hisbridge_send_seconds",
                                      "Duration of one send attempt to a destination.")
        self.gauges: list[Gauge] = []

    def families(self) -> list[Counter | Histogram | Gauge]:
        return [
            self.received, self.duplicates, self.refused, self.key_reused, self.filtered,
            self.mapped, self.mapping_errors, self.sent, self.retried, self.dead_lettered,
            self.resends_skipped, self.ingest_latency, self.delivery_latency,
            self.send_latency, *self.gauges,
        ]

    def render(self) -> str:
        lines: list[str] = []
        for family in self.families():
            lines.extend(family.render())
        return "\n".join(lines) + "\n"
