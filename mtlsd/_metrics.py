# -*- test-case-name: mtlsd.test.test_metrics -*-
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

from ._settings import ServerTLSSettings


@implementer(ILogObserver)
class Metrics:
    """
    mtlsd's metrics, in a registry of their own.  As a log observer it
    counts mtlsd's events (C{accepted}, C{closed}, C{rejected}, ...); the
    certificate expiry gauges follow the settings given to L{observeSettings}.
    """

    def __init__(self, settings: Callable[[], ServerTLSSettings] | None = None) -> None:
        """
        @param settings: gives the settings in force, whose certificates'
            expiry is published now and after each reload.
        """
        self._settings = settings
        self.registry = CollectorRegistry()
        r = self.registry
        self.accepted = Counter(
            "mtlsd_connections_accepted", "Clients admitted after the handshake.", registry=r
        )
        self.rejected = Counter(
            "mtlsd_handshakes_rejected",
            "Connections turned away before the application, by reason.",
            ["reason"],
            registry=r,
        )
        self.active = Gauge("mtlsd_connections_active", "Established connections.", registry=r)
        self.bytes = Counter(
            "mtlsd_bytes", "Application bytes relayed, by direction.", ["direction"], registry=r
        )
        self.handshakes = Histogram(
            "mtlsd_handshake_duration_seconds",
            "From TCP accept to an admitted client.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.cut = Counter(
            "mtlsd_connections_cut",
            "Live connections cut: trust changed (revoked, no longer trusted, not allowed"
            " by policy) or shutdown.",
            ["reason"],
            registry=r,
        )
        self.refused = Counter(
            "mtlsd_connections_refused", "Connections refused by a limit.", ["limit"], registry=r
        )
        self.timeouts = Counter(
            "mtlsd_connections_timed_out",
            "Connections closed by the idle or lifetime limit.",
            ["limit"],
            registry=r,
        )
        self.reloads = Counter("mtlsd_reloads", "Trust reloads, by result.", ["result"], registry=r)
        self.lastReload = Gauge(
            "mtlsd_last_reload_success_timestamp_seconds",
            "When the trust was last loaded successfully.",
            registry=r,
        )
        self.backendFailures = Counter(
            "mtlsd_backend_connect_failures", "Backend connections that failed.", registry=r
        )
        self.expiry = Gauge(
            "mtlsd_certificate_expiry_timestamp_seconds",
            "notAfter of the server certificate and of every trusted certificate.",
            ["role", "subject", "sha256"],
            registry=r,
        )
        self.serverExpiry = self.serverStart = 0.0
        self._counters: dict[str, Callable[[dict[str, Any]], None]] = {
            "accepted": self._accepted,
            "closed": self._closed,
            "rejected": lambda e: self.rejected.labels(e.get("reason", "?")).inc(),
            "cut": lambda e: self.cut.labels(e.get("reason", "?")).inc(),
            "refused": lambda e: self.refused.labels(e.get("limit", "?")).inc(),
            "timeout": lambda e: self.timeouts.labels(e.get("limit", "?")).inc(),
            "reloaded": self._reloaded,
            "reload-failed": lambda e: self.reloads.labels("failed").inc(),
            "backend-unavailable": lambda e: self.backendFailures.inc(),
        }
        if settings is not None:
            self.observeSettings(settings())

    def __call__(self, event: dict[str, Any]) -> None:
        name = event.get("mtlsdEvent", "")
        if "mtlsdWorker" in event and name in ("reloaded", "reload-failed"):
            return  # each worker reloads the trust this process reloads and counts
        count = self._counters.get(name)
        if count is not None:
            count(event)

    def _accepted(self, event: dict[str, Any]) -> None:
        self.accepted.inc()
        self.active.inc()
        if "handshakeDuration" in event:
            self.handshakes.observe(event["handshakeDuration"])

    def _closed(self, event: dict[str, Any]) -> None:
        self.active.dec()
        self.bytes.labels("in").inc(event.get("bytesIn", 0))
        self.bytes.labels("out").inc(event.get("bytesOut", 0))

    def _reloaded(self, event: dict[str, Any]) -> None:
        self.reloads.labels("ok").inc()
        if self._settings is not None:
            self.observeSettings(self._settings())

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
