"""The Prometheus metrics of one running bridge, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
PAGE_BUCKETS = (1, 2, 3, 5, 10, 20, 50, 100, 200, 500)
DELIVERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30)


class Metrics:
    """Updated where things happen (poller, client, dispatcher); rendered by `/metrics`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._delivery_children: dict[tuple[str, str], Counter] = {}
        reg = self.registry
        self.polls = Counter(
            "bridge_polls",
            "Polls of the Munsit list by account and result (ok, error, auth_failed)",
            ["account", "result"],
            registry=reg,
        )
        self.upstream_requests = Counter(
            "bridge_upstream_requests",
            "Munsit list requests by account and HTTP status code (or timeout, error)",
            ["account", "code"],
            registry=reg,
        )
        self.pages_per_poll = Histogram(
            "bridge_upstream_pages_per_poll",
            "List pages read by one successful poll, by account",
            ["account"],
            buckets=PAGE_BUCKETS,
            registry=reg,
        )
        self.events = Counter("bridge_events", "Events recorded, by type", ["type"], registry=reg)
        self.deliveries = Counter(
            "bridge_deliveries",
            "Delivery attempts by subscriber and result (delivered, retry, failed)",
            ["subscriber", "result"],
            registry=reg,
        )
        self.delivery_seconds = Histogram(
            "bridge_delivery_seconds",
            "Latency of delivery attempts",
            buckets=DELIVERY_BUCKETS,
            registry=reg,
        )
        self.outbox_pending = Gauge(
            "bridge_outbox_pending", "Deliveries pending (due or waiting to retry)", registry=reg
        )
        self.records_pending = Gauge(
            "bridge_records_pending",
            "Known Munsit records still pending, by account",
            ["account"],
            registry=reg,
        )
        self.subscriber_enabled = Gauge(
            "bridge_subscriber_enabled",
            "1 while the subscriber's deliveries are being sent",
            ["subscriber"],
            registry=reg,
        )
        self.progress_streams = Gauge(
            "bridge_progress_streams", "Progress streams open", registry=reg
        )
        self.component_restarts = Counter(
            "bridge_component_restarts",
            "Restarts of a supervised component after an unexpected error",
            ["component"],
            registry=reg,
        )
        self.records_quarantined = Counter(
            "bridge_records_quarantined",
            "Munsit records skipped because they cannot be stored or delivered as sent, by account",
            ["account"],
            registry=reg,
        )
        self.outbox_orphaned = Gauge(
            "bridge_outbox_orphaned",
            "Deliveries kept for subscribers no longer in the configuration",
            registry=reg,
        )
        self.leader = Gauge(
            "bridge_leader",
            "1 while this replica holds the poller's lease (polls Munsit), else 0",
            registry=reg,
        )
        self.gateway_requests = Counter(
            "bridge_gateway_requests",
            "Gateway requests answered, by route and status code",
            ["route", "code"],
            registry=reg,
        )
        self.last_poll_success = Gauge(
            "bridge_last_poll_success_timestamp_seconds",
            "Unix time of the last successful poll, by account",
            ["account"],
            registry=reg,
        )

    def count_delivery(self, subscriber: str, result: str) -> None:
        """One attempt's outcome in `bridge_deliveries_total` (its labelled child is looked
        up once: this runs for every attempt)."""
        child = self._delivery_children.get((subscriber, result))
        if child is None:
            child = self._delivery_children[subscriber, result] = self.deliveries.labels(
                subscriber, result
            )
        child.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
