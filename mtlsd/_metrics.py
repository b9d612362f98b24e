# -*- test-case-name: mtlsd.test.test_events -*-
"""
Prometheus metrics and the health check, fed by mtlsd's own log events (so
what is logged and what is counted cannot disagree) and served with
prometheus-client.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.twisted import MetricsResource
from twisted.logger import ILogObserver, Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from ._events import EVENTS, Metric
from ._settings import ServerTLSSettings

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@implementer(ILogObserver)
class Metrics:
    """
    mtlsd's metrics, in a registry of their own.  As a log observer it moves
    the metrics the table of events (L{mtlsd._events.EVENTS}) gives each
    event; the certificate expiry gauges follow the settings given to
    L{observeSettings}, and after each reload.
    """

    def __init__(self, settings: Callable[[], ServerTLSSettings] | None = None) -> None:
        """
        @param settings: gives the settings in force, whose certificates'
            expiry is published now and after each reload.
        """
        self._settings = settings
        self.registry = CollectorRegistry()
        self._metrics: dict[str, Any] = {}
        for event in EVENTS.values():
            for metric in event.metrics:
                if metric.name not in self._metrics:
                    self._metrics[metric.name] = self._make(metric)
        self.lastReload = Gauge(
            "mtlsd_last_reload_success_timestamp_seconds",
            "When the trust was last loaded successfully.",
            registry=self.registry,
        )
        self.expiry = Gauge(
            "mtlsd_certificate_expiry_timestamp_seconds",
            "notAfter of the server certificate and of every trusted certificate.",
            ["role", "subject", "sha256"],
            registry=self.registry,
        )
        self.serverExpiry = self.serverStart = 0.0
        if settings is not None:
            self.observeSettings(settings())

    def _make(self, metric: Metric) -> Any:
        labels = [label for label, _ in metric.labels]
        if metric.kind == "counter":
            return Counter(metric.name, metric.help, labels, registry=self.registry)
        if metric.kind == "gauge":
            return Gauge(metric.name, metric.help, labels, registry=self.registry)
        return Histogram(metric.name, metric.help, labels, buckets=_BUCKETS, registry=self.registry)

    def __call__(self, event: dict[str, Any]) -> None:
        kind = EVENTS.get(event.get("mtlsdEvent", ""))
        if kind is None:
            return
        fromWorker = "mtlsdWorker" in event
        for metric in kind.metrics:
            if metric.perProcess and fromWorker:
                continue  # each worker does what this process does and counts
            self._move(metric, event)
        if kind.name == "reloaded" and not fromWorker and self._settings is not None:
            self.observeSettings(self._settings())

    def _move(self, metric: Metric, event: dict[str, Any]) -> None:
        published = self._metrics[metric.name]
        if metric.labels:
            published = published.labels(
                *[
                    source[1:] if source.startswith("=") else str(event.get(source, "?"))
                    for _, source in metric.labels
                ]
            )
        if metric.kind == "gauge":
            published.inc(int(metric.amount))
        elif metric.kind == "histogram":
            if metric.amount in event:
                published.observe(event[metric.amount])
        else:
            published.inc(1 if metric.amount == 1 else event.get(str(metric.amount), 0))

    def observeSettings(self, settings: ServerTLSSettings) -> None:
        """
        Publish the expiry of the server certificate and of every trusted
        certificate of C{settings}, replacing earlier ones.
        """
        self.expiry.clear()
        self.lastReload.set_to_current_time()
        for role, certificates in (
            ("server", [settings.certificate]),
            ("trusted", settings.anchors),
        ):
            for certificate in certificates:
                self.expiry.labels(
                    role,
                    certificate.subject.rfc4514_string(),
                    certificate.fingerprint(hashes.SHA256()).hex(),
                ).set(certificate.not_valid_after_utc.timestamp())
        self.serverExpiry = settings.certificate.not_valid_after_utc.timestamp()
        self.serverStart = settings.certificate.not_valid_before_utc.timestamp()


class _Health(Resource):
    isLeaf = True

    def __init__(self, metrics: Metrics, listening: Callable[[], bool]) -> None:
        super().__init__()
        self._metrics = metrics
        self._listening = listening

    def render_GET(self, request: Request) -> bytes:
        now = time.time()
        problems = []
        if not self._listening():
            problems.append("not listening")
        if not self._metrics.serverStart <= now <= self._metrics.serverExpiry:
            problems.append("server certificate not valid now")
        request.setResponseCode(503 if problems else 200)
        request.setHeader(b"content-type", b"application/json")
        body = {"status": "unhealthy" if problems else "ok", "problems": problems}
        return json.dumps(body).encode() + b"\n"


def metricsSite(metrics: Metrics, listening: Callable[[], bool]) -> Site:
    """
    @return: a web site serving C{/metrics} (Prometheus text format) and
        C{/healthz} (200 while C{listening()} and the server certificate is
        valid, else 503; a short JSON body).
    """
    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry=metrics.registry))
    root.putChild(b"healthz", _Health(metrics, listening))
    site = _QuietSite(root)
    site.noisy = False
    return site


class _QuietSite(Site):
    """
    A site whose access log lines are debug events: a monitoring system
    scrapes C{/metrics} and asks C{/healthz} several times a minute, which
    at info level would bury the connection events.
    """

    _log = Logger(namespace="mtlsd.metrics")

    def log(self, request: http.Request) -> None:
        self._log.debug(
            "{client} {method} {path} {code}",
            client=request.getClientAddress(),
            method=request.method.decode("ascii", "replace"),
            path=request.uri.decode("ascii", "replace"),
            code=request.code,
        )
