"""Prometheus metrics for /metrics, read from the hub at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from katapool.pool.supervisor import SlotState
from katapool.server.hub import Hub

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _HubCollector(Collector):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("katapool_members_up", "Members ready to analyse", labels=["model"])
        total = GaugeMetricFamily("katapool_members", "Members configured", labels=["model"])
        restarts = CounterMetricFamily("katapool_member_restarts", "Member restarts after a loss",
                                       labels=["model", "member"])
        queue = GaugeMetricFamily("katapool_queue_depth", "Queries accepted and not yet finished",
                                  labels=["model"])
        waiting = GaugeMetricFamily("katapool_queries_waiting",
                                    "Queries waiting for a free member", labels=["model"])
        for served in self.hub.served.values():
            slots = served.pool.supervisor.slots
            up.add_metric([served.name], sum(s.state is SlotState.READY for s in slots))
            total.add_metric([served.name], len(slots))
            for slot in slots:
                restarts.add_metric([served.name, slot.name], slot.restarts)
            queue.add_metric([served.name], served.pool.router.outstanding)
            waiting.add_metric([served.name], len(served.pool.router.waiting))
        outcomes = CounterMetricFamily("katapool_responses", "Final responses and errors, by "
                                       "outcome (answered, no_results, error, rejected)",
                                       labels=["model", "outcome"])
        for (model, outcome), count in sorted(self.hub.outcomes.items()):
            outcomes.add_metric([model, outcome], count)
        conns = GaugeMetricFamily("katapool_connections", "Clients connected")
        conns.add_metric([], len(self.hub.connections))
        yield from (up, total, restarts, queue, waiting, outcomes, conns)


class Metrics:
    def __init__(self, hub: Hub) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_HubCollector(hub))
        self.latency = Histogram("katapool_response_seconds",
                                 "Time from accepting a query to each final response",
                                 ["model"], registry=self.registry, buckets=LATENCY_BUCKETS)
        hub.on_latency = lambda model, seconds: self.latency.labels(model).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
