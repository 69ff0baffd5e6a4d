"""Prometheus metrics for /metrics, read from the hub at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from katapool.server.hub import Hub

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _HubCollector(Collector):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("katapool_members_up", "Members ready to analyse", labels=["model"])
        total = GaugeMetricFamily("katapool_members", "Members configured", labels=["model"])
        # Per-member series also say where the member runs ("local": a child process here).
        restarts = CounterMetricFamily("katapool_member_restarts", "Member restarts after a loss",
                                       labels=["model", "member", "node"])
        queue = GaugeMetricFamily("katapool_queue_depth", "Queries accepted and not yet finished",
                                  labels=["model"])
        waiting = GaugeMetricFamily("katapool_queries_waiting",
                                    "Queries waiting for a free member", labels=["model"])
        by_cause = CounterMetricFamily("katapool_member_restarts_by_cause", "Member restarts "
                                       "by cause (died, unresponsive, not_functional, stuck, "
                                       "backlog, other)", labels=["model", "member", "node", "cause"])
        garbage = CounterMetricFamily("katapool_engine_garbage_lines", "Engine output lines "
                                      "that were not JSON objects (skipped)",
                                      labels=["model", "member", "node"])
        oldest_waiting = GaugeMetricFamily("katapool_oldest_waiting_seconds", "Age of the "
                                           "oldest query waiting for a free member (0: none)",
                                           labels=["model"])
        oldest = GaugeMetricFamily("katapool_oldest_query_seconds", "Age of the oldest query "
                                   "accepted and not yet finished (0: none)", labels=["model"])
        router_counters = {
            "rerouted": CounterMetricFamily(
                "katapool_rerouted_queries", "Queries moved to another member after theirs was "
                "lost (once per query and loss)", labels=["model"]),
            "rerouted_turns": CounterMetricFamily(
                "katapool_rerouted_turns", "Turns moved to another member after theirs was lost",
                labels=["model"]),
            "rebalanced_turns": CounterMetricFamily(
                "katapool_rebalanced_turns", "Queued turns moved from a busy member to an idle "
                "one", labels=["model"]),
            "quarantined": CounterMetricFamily(
                "katapool_quarantined_queries", "Queries refused as poison after members died "
                "running them", labels=["model"]),
            "duplicates_dropped": CounterMetricFamily(
                "katapool_duplicates_dropped", "Final responses dropped because the turn was "
                "already answered", labels=["model"]),
        }
        for served in self.hub.served.values():
            members = served.pool.members()
            counters = served.pool.counters()
            up.add_metric([served.name], sum(m.ready for m in members))
            total.add_metric([served.name], len(members))
            for m in members:
                restarts.add_metric([served.name, m.name, m.node], m.restarts)
                for cause, count in sorted(m.restart_causes.items()):
                    by_cause.add_metric([served.name, m.name, m.node, cause], count)
                garbage.add_metric([served.name, m.name, m.node], m.garbage_lines)
            queue.add_metric([served.name], counters.outstanding)
            waiting.add_metric([served.name], counters.waiting)
            oldest_waiting.add_metric([served.name], counters.oldest_waiting_s or 0.0)
            oldest.add_metric([served.name], counters.oldest_query_s or 0.0)
            for key, family in router_counters.items():
                family.add_metric([served.name], counters.events.get(key, 0))
        outcomes = CounterMetricFamily("katapool_responses", "Final responses and errors, by "
                                       "outcome (answered, no_results, error, rejected)",
                                       labels=["model", "outcome"])
        for (model, outcome), count in sorted(self.hub.outcomes.items()):
            outcomes.add_metric([model, outcome], count)
        conns = GaugeMetricFamily("katapool_connections", "Clients connected")
        conns.add_metric([], len(self.hub.connections))
        yield from (up, total, restarts, by_cause, garbage, queue, waiting, oldest_waiting,
                    oldest, *router_counters.values(), outcomes, conns)


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
