"""
Tests for L{mtlsd._services}: the C{[[service]]} tables of the
configuration file, each read as a daemon's options.
"""

from __future__ import annotations

import os

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from mtlsd._metrics import Metrics
from mtlsd._options import Options
from mtlsd._settings import ServerTLSSettings
from mtlsd.testing import CertificateAuthority


class ServiceTablesTests(SynchronousTestCase):
    def parse(self, toml: str, *argv: str) -> Options:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(toml)
        self.path = path
        options = Options()
        options.parseOptions(["--config", path, *argv])
        return options

    def assertRefused(self, toml: str, message: str, *argv: str) -> None:
        with self.assertRaises(usage.UsageError) as raised:
            self.parse(toml, *argv)
        self.assertIn(message, str(raised.exception))

    def test_inheritAndOverride(self) -> None:
        """
        Each service inherits the top-level keys, replaces those it gives
        (a list too), and takes the command line's.
        """
        options = self.parse(
            """
client-certs = ["/etc/a.pem", "/etc/b.pem"]
handshake-timeout = 7
cert = "/etc/server.pem"

[[service]]
name = "api"
port = 8443

[[service]]
name = "admin"
port = 9443
client-certs = "/etc/admins.pem"
handshake-timeout = 2
""",
            "--idle-timeout",
            "60",
        )
        [api, admin] = options.services
        self.assertEqual((api.name, admin.name), ("api", "admin"))
        self.assertEqual(
            (api.options["port"], api.options["client-certs"], api.options["handshake-timeout"]),
            (8443, ["/etc/a.pem", "/etc/b.pem"], 7),
        )
        self.assertEqual(
            (admin.options["port"], admin.options["client-certs"]), (9443, ["/etc/admins.pem"])
        )
        self.assertEqual(admin.options["handshake-timeout"], 2)
        self.assertEqual([s.options["idle-timeout"] for s in options.services], [60, 60])

    def test_noTables(self) -> None:
        """
        A file without tables is one service, as before.
        """
        self.assertEqual(self.parse("port = 8443\n").services, [])

    def test_errorsNameTheService(self) -> None:
        """
        Each mistake is one line naming the file and the service.
        """
        for toml, message in [
            ("[[service]]\nport = 1\n", "service 1 needs a name of letters, digits"),
            ('[[service]]\nname = "a b"\n', "(name = \"api\"); it has 'a b'."),
            (
                '[[service]]\nname = "a"\nport = 1\n[[service]]\nname = "a"\nport = 2\n',
                "two services are named 'a'",
            ),
            (
                '[[service]]\nname = "api"\nportt = 1\n',
                "service 'api' has an unknown key 'portt' (did you mean 'port'?)",
            ),
            (
                '[[service]]\nname = "api"\ntls-min-version = "1.1"\n',
                "service 'api': --tls-min-version must be 1.2 or 1.3",
            ),
            (
                '[[service]]\nname = "api"\nmetrics = "tcp:9100"\n',
                "service 'api': metrics applies to the whole daemon",
            ),
            (
                '[[service]]\nname = "api"\nserver-names = ["a..example"]\n',
                "service 'api': server-names 'a..example' is not a DNS name",
            ),
            (
                '[[service]]\nname = "a"\n[[service]]\nname = "b"\n',
                "services 'a' and 'b' both listen on tcp:8082",
            ),
            (
                '[[service]]\nname = "a"\nserver-names = "x.example"\n'
                '[[service]]\nname = "b"\nserver-names = "X.example"\n',
                "server name x.example is in the server-names of both services 'a' and 'b'",
            ),
            (
                '[[service]]\nname = "a"\ndefault = true\n'
                '[[service]]\nname = "b"\ndefault = true\n',
                "services 'a' and 'b' are both the default of tcp:8082",
            ),
            (
                '[[service]]\nname = "a"\nserver-names = "a.example"\n'
                '[[service]]\nname = "b"\nserver-names = "b.example"\ntls-min-version = "1.3"\n',
                "services 'a' and 'b' share tcp:8082:interface=\\:\\:, so they must agree on"
                " tls-min-version",
            ),
            (
                '[[service]]\nname = "a"\nlisten = ["tcp:1", "tcp:2"]\n'
                '[[service]]\nname = "b"\nlisten = "tcp:2"\n',
                "services 'a' and 'b' share tcp:2 but not all their addresses",
            ),
            ('[[service]]\nname = "a"\ndefault = 1\n', "service 'a': default takes true or false"),
            ("service = 3\n", "service must be tables, each [[service]]"),
        ]:
            self.assertRefused(toml, message)
        error = self.errorOf('[[service]]\nname = "x"\nportt=1\n')
        self.assertIn(f"config file {self.path}, service 'x'", error)

    def errorOf(self, toml: str) -> str:
        with self.assertRaises(usage.UsageError) as raised:
            self.parse(toml)
        return str(raised.exception)

    def test_commandLineListen(self) -> None:
        """
        C{--port} or C{--listen} on the command line would apply to every
        service: refused, naming the conflict.
        """
        toml = '[[service]]\nname = "a"\nport = 1\n'
        for argv in (["--port", "9"], ["--listen", "tcp:9"]):
            self.assertRefused(
                toml, f"{argv[0]} cannot be used with the [[service]] tables of", *argv
            )

    def test_workers(self) -> None:
        """
        C{workers} is the daemon's, at the top level (every worker serves
        every service).
        """
        options = self.parse('workers = 2\n[[service]]\nname = "a"\nport = 1\n')
        self.assertEqual(options["workers"], 2)

    def test_serverNames(self) -> None:
        """
        Services sharing an address each name their server names (or one
        is the default); names match without case, C{*.} one label.
        """
        options = self.parse(
            '[[service]]\nname = "a"\nport = 1\nserver-names = ["A.example", "*.b.example"]\n'
            '[[service]]\nname = "b"\nport = 1\ndefault = true\n'
        )
        a, b = options.services
        self.assertEqual((a.serverNames, b.default), (("a.example", "*.b.example"), True))
        self.assertTrue(a.serves("a.EXAMPLE.") and a.serves("x.b.example"))
        self.assertFalse(a.serves("b.example") or a.serves("y.x.b.example"))

    def test_anyPortTwice(self) -> None:
        """
        Two services on port 0 (any free port) do not share an address.
        """
        options = self.parse(
            '[[service]]\nname = "a"\nport = 0\n[[service]]\nname = "b"\nport = 0\n'
        )
        self.assertEqual(len(options.services), 2)


class ServiceMetricsTests(SynchronousTestCase):
    def test_serviceLabel(self) -> None:
        """
        With services, every metric has a C{service} label, from the event,
        and each service's certificates are published under its name.
        """
        ca = CertificateAuthority()
        server = ca.server()
        settings = ServerTLSSettings(server.certificate, server.key, trusted=(ca.certificate,))
        metrics = Metrics(services={"api": lambda: settings, "admin": lambda: settings})
        metrics(
            {"mtlsdEvent": "refused", "client": "x", "limit": "max-connections", "service": "api"}
        )
        metrics({"mtlsdEvent": "rejected", "reason": "no service for server name", "service": None})
        self.assertEqual(
            metrics.registry.get_sample_value(
                "mtlsd_handshakes_rejected_total",
                {"service": "", "reason": "no service for server name"},
            ),
            1,
        )
        self.assertIsNotNone(
            metrics.registry.get_sample_value(
                "mtlsd_last_reload_success_timestamp_seconds", {"service": "admin"}
            )
        )
        self.assertEqual(
            metrics.registry.get_sample_value(
                "mtlsd_connections_refused_total", {"service": "api", "limit": "max-connections"}
            ),
            1,
        )
        served = [
            sample.labels["service"]
            for metric in metrics.registry.collect()
            if metric.name == "mtlsd_certificate_expiry_timestamp_seconds"
            for sample in metric.samples
        ]
        self.assertEqual(sorted(set(served)), ["admin", "api"])
        self.assertEqual(metrics.certificateProblems(0), [
            "service 'api': server certificate not valid now",
            "service 'admin': server certificate not valid now",
        ])  # fmt: skip

    def test_noServiceLabel(self) -> None:
        """
        A daemon of one service publishes no C{service} label, as before.
        """
        metrics = Metrics()
        metrics({"mtlsdEvent": "refused", "client": "x", "limit": "max-connections"})
        self.assertEqual(
            metrics.registry.get_sample_value(
                "mtlsd_connections_refused_total", {"limit": "max-connections"}
            ),
            1,
        )
