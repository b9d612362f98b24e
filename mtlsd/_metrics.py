# -*- test-case-name: mtlsd.test.test_events -*-
"""
Prometheus metrics and the health check, fed by mtlsd's own log events (so
what is logged and what is counted cannot disagree) and served with
prometheus-client.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
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

    def __init__(
        self,
        settings: Callable[[], ServerTLSSettings] | None = None,
        services: Mapping[str, Callable[[], ServerTLSSettings]] | None = None,
    ) -> None:
        """
        @param settings: gives the settings in force, whose certificates'
            expiry is published now and after each reload.
        @param services: instead, those of each service of a daemon of
            many, by name: every metric then has a C{service} label.
        """
        self._services: dict[str | None, Callable[[], ServerTLSSettings]] = {}
        self._services.update(services or {})
        if settings is not None:
            self._services[None] = settings
        self._labelled = services is not None
        self._published: dict[str | None, list[tuple[str, ...]]] = {}
        self._validity: dict[str | None, tuple[float, float]] = {}
        self.registry = CollectorRegistry()
        self._metrics: dict[str, Any] = {}
        for event in EVENTS.values():
            for metric in event.metrics:
                if metric.name not in self._metrics:
                    self._metrics[metric.name] = self._make(metric)
        self.lastReload = Gauge(
            "mtlsd_last_reload_success_timestamp_seconds",
            "When the trust was last loaded successfully.",
            self._serviceLabel,
            registry=self.registry,
        )
        self.expiry = Gauge(
            "mtlsd_certificate_expiry_timestamp_seconds",
            "notAfter of the server certificate and of every trusted certificate.",
            [*self._serviceLabel, "role", "subject", "sha256"],
            registry=self.registry,
        )
        for service, current in self._services.items():
            self.observeSettings(current(), service)

    @property
    def _serviceLabel(self) -> list[str]:
        return ["service"] if self._labelled else []

    def _make(self, metric: Metric) -> Any:
        labels = [*self._serviceLabel, *(label for label, _ in metric.labels)]
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
        service = event.get("service")
        if kind.name == "reloaded" and not fromWorker and service in self._services:
            self.observeSettings(self._services[service](), service)

    def _move(self, metric: Metric, event: dict[str, Any]) -> None:
        published = self._metrics[metric.name]
        values = [event.get("service") or ""] if self._labelled else []
        values += [
            source[1:] if source.startswith("=") else str(event.get(source, "?"))
            for _, source in metric.labels
        ]
        if values:
            published = published.labels(*values)
        if metric.kind == "gauge":
            published.inc(int(metric.amount))
        elif metric.kind == "histogram":
            if metric.amount in event:
                published.observe(event[metric.amount])
        else:
            published.inc(1 if metric.amount == 1 else event.get(str(metric.amount), 0))

    def observeSettings(self, settings: ServerTLSSettings, service: str | None = None) -> None:
        """
        Publish the expiry of the server certificate and of every trusted
        certificate of C{settings} (of C{service}), replacing earlier ones.
        """
        for labels in self._published.pop(service, []):
            self.expiry.remove(*labels)
        (
            self.lastReload.labels(str(service)) if self._labelled else self.lastReload
        ).set_to_current_time()
        published = self._published[service] = []
        for role, certificates in (
            ("server", [settings.certificate, *(c for c, _, _ in settings.moreCertificates)]),
            ("trusted", settings.anchors),
        ):
            for certificate in certificates:
                labels = (
                    *([str(service)] if self._labelled else []),
                    role,
                    certificate.subject.rfc4514_string(),
                    certificate.fingerprint(hashes.SHA256()).hex(),
                )
                if labels not in published:
                    published.append(labels)
                self.expiry.labels(*labels).set(certificate.not_valid_after_utc.timestamp())
        self._validity[service] = (
            settings.certificate.not_valid_before_utc.timestamp(),
            settings.certificate.not_valid_after_utc.timestamp(),
        )

    def certificateProblems(self, now: float) -> list[str]:
        """
        @return: a problem for each service whose server certificate is not
            valid at C{now} (none without settings).
        """
        return [
            "server certificate not valid now"
            if service is None
            else f"service {service!r}: server certificate not valid now"
            for service, (start, end) in self._validity.items()
            if not start <= now <= end
        ]


class _Health(Resource):
    isLeaf = True

    def __init__(self, metrics: Metrics, listening: Callable[[], list[str]]) -> None:
        super().__init__()
        self._metrics = metrics
        self._listening = listening

    def render_GET(self, request: Request) -> bytes:
        now = time.time()
        problems = []
        problems += self._listening()
        problems += self._metrics.certificateProblems(now)
        request.setResponseCode(503 if problems else 200)
        request.setHeader(b"content-type", b"application/json")
        body = {"status": "unhealthy" if problems else "ok", "problems": problems}
        return json.dumps(body).encode() + b"\n"


def metricsSite(metrics: Metrics, listening: Callable[[], list[str]]) -> Site:
    """
    @param listening: gives what is not listening (C{"not listening"}, or
        C{"service 'api': not listening"}): nothing while all is up.
    @return: a web site serving C{/metrics} (Prometheus text format) and
        C{/healthz} (200 while all listens and every server certificate is
        valid, else 503 with the problems; a short JSON body).
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
