"""
Tests for L{mtlsd._tap}: the options of C{twistd mtlsd} and the service.
"""

import os
import socket

from twisted.internet.testing import MemoryReactor, MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from mtlsd._pki import certificatePEM, keyPEM
from mtlsd._tap import Options, makeService
from mtlsd.test.helpers import hoursAgo
from mtlsd.testing import selfSigned


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


def hostAllInterfaces() -> str:
    """
    The address meaning "all interfaces" on this host, found the way the
    kernel shows it rather than the way L{mtlsd._tap} reads it: C{::} where
    a new IPv6 socket takes IPv4 clients too (dual-stack: C{IPV6_V6ONLY} off
    by default, C{net.ipv6.bindv6only = 0} on Linux), else C{0.0.0.0} (no
    IPv6, or IPv6-only sockets).
    """
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            v6only = probe.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
    except OSError:
        return "0.0.0.0"
    return "0.0.0.0" if v6only else "::"


class OptionsTests(SynchronousTestCase):
    """
    Option parsing and the usage errors it reports.
    """

    def test_defaults(self) -> None:
        """
        With no options: port 8082 (chosen later), echo app, dev PKI in
        C{mtlsd-pki}, handshake timeout 10 s, verify depth 4.
        """
        options = parse()
        self.assertEqual(
            (options["port"], options["app"], options["pki"]), (None, None, "mtlsd-pki")
        )
        self.assertEqual((options["handshake-timeout"], options["verify-depth"]), (10.0, 4))
        self.assertEqual(options["client-certs"], [])

    def test_trustOptions(self) -> None:
        """
        CRL, reload, allow-list and TLS options; the C{--allow-*} ones make
        the policy.
        """
        options = parse(
            "--cert", "s.pem", "--client-certs", "c.pem", "--crl", "a.crl", "--crl", "b.crl",
            "--crl-check-chain", "--crl-required", "--reload-interval", "0", "--keep-live-sessions",
            "--tls-min-version", "1.3", "--allow-cn", "web-*", "--allow-uri", "spiffe://x/**",
            "--allow-dns", "a.example", "--allow-ip", "10.0.0.0/8", "--allow-ou", "ops",
            "--allow-fingerprint", "ab" * 32, "--allow-spki", "CD" * 32,
        )  # fmt: skip
        self.assertEqual(options["crl"], ["a.crl", "b.crl"])
        self.assertEqual((options["crl-check-chain"], options["crl-required"]), (True, True))
        self.assertEqual((options["reload-interval"], options["keep-live-sessions"]), (0, True))
        self.assertEqual(options["tls-min-version"], "1.3")
        policy = options.policy()
        self.assertEqual(len(policy.commonNames), 1)
        self.assertEqual(policy.spkiFingerprints, frozenset({"cd" * 32}))
        self.assertEqual(parse()["reload-interval"], 2.0)

    def test_backends(self) -> None:
        """
        Loopback and UNIX backends are allowed; others with
        C{--unsafe-backend}.
        """
        for backend in (
            "tcp:127.0.0.1:8080",
            "tcp:host=localhost:port=80",
            r"tcp:\:\:1:80",
            "unix:/run/app.sock",
        ):
            self.assertEqual(parse("--forward", backend)["forward"], backend)
        parse("--forward", "tcp:10.0.0.5:80", "--unsafe-backend")

    def test_configFile(self) -> None:
        """
        C{--config FILE} gives the options; the command line overrides it,
        a repeatable option given there replacing the file's list; an
        unknown key is an error naming it.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                'port = 8443\ncert = "s.pem"\nclient-certs = ["a.pem", "b.pem"]\n'
                'crl-required = true\nallow-cn = "web"\n'
            )
        options = parse("--config", path, "--port", "9000")
        self.assertEqual(options["port"], 9000)
        self.assertEqual(options["client-certs"], ["a.pem", "b.pem"])
        self.assertTrue(options["crl-required"])
        self.assertEqual(options["allow-cn"], ["web"])
        options = parse(f"--config={path}", "--client-certs", "c.pem")
        self.assertEqual((options["port"], options["client-certs"]), (8443, ["c.pem"]))
        self.assertEqual(parse("--conf", path)["port"], 8443)  # getopt's abbreviation
        self.assertIn(
            "twice", str(self.assertRaises(UsageError, parse, "--config", path, "--config", path))
        )
        with open(path, "a") as f:
            f.write("colour = 3\n")
        error = self.assertRaises(UsageError, parse, "--config", path)
        self.assertIn("unknown key 'colour'", str(error))

    def test_limitOptions(self) -> None:
        """
        Limits, metrics, log format and drain options.
        """
        options = parse(
            "--idle-timeout", "30", "--max-conn-lifetime", "3600", "--max-connections", "100",
            "--max-connections-per-ip", "5", "--drain-timeout", "10", "--metrics", "tcp:9102",
            "--log-format", "json", "--quiet", "handshake-errors",
        )  # fmt: skip
        self.assertEqual(
            (options["idle-timeout"], options["max-connections"], options["drain-timeout"]),
            (30.0, 100, 10.0),
        )
        self.assertEqual(parse()["drain-timeout"], 30.0)
        for argv, fragment in [
            (["--log-format", "xml"], "--log-format must be text or json"),
            (["--quiet", "everything"], "--quiet takes handshake-errors"),
            (["--max-connections", "0"], "--max-connections wants a number"),
        ]:
            self.assertIn(fragment, str(self.assertRaises(UsageError, parse, *argv)))

    def test_repeatable(self) -> None:
        """
        C{--client-certs} and C{--listen} can be given several times.
        """
        options = parse(
            "--cert", "s.pem", "--client-certs", "a.pem", "--client-certs", "b.pem",
            "--listen", "tcp:1", "--listen", "unix:/tmp/x",
        )  # fmt: skip
        self.assertEqual(options["client-certs"], ["a.pem", "b.pem"])
        self.assertEqual(options["listen"], ["tcp:1", "unix:/tmp/x"])

    def test_usageErrors(self) -> None:
        """
        Half-given TLS files and conflicting options are usage errors that
        say what is wrong.
        """
        for argv, fragment in [
            (["--cert", "s.pem"], "--cert needs --client-certs"),
            (["--client-certs", "c.pem"], "need --cert"),
            (["--key", "k.pem", "--client-certs", "c.pem"], "need --cert"),
            (["--listen", "tcp:1", "--port", "2"], "--listen and --port"),
            (["--listen", "tcp:1", "--interface", "::1"], "--interface goes with --port"),
            (["--verify-depth", "0"], "--verify-depth"),
            (["--handshake-timeout", "0"], "--handshake-timeout wants a number"),
            (["--crl", "c.pem"], "need --cert"),
            (["--app", "x.y", "--forward", "tcp:127.0.0.1:80"], "--app and --forward"),
            (["--proxy-protocol", "v2"], "--proxy-protocol goes with --forward"),
            (["--forward", "unix:/s", "--proxy-protocol", "v3"], "must be v1, v2 or v2-full"),
            (["--forward", "tcp:10.0.0.5:80"], "not on loopback or a UNIX socket"),
            (["--forward", "tcp:host=backend.example:port=80"], "give --unsafe-backend"),
            (["--tls-min-version", "1.1"], "--tls-min-version must be 1.2 or 1.3"),
            (
                ["--cert", "a.pem", "--cert", "b.pem", "--key", "a.key", "--client-certs", "c.pem"],
                "--key is given 1 time for 2 --cert: give one --key per --cert",
            ),
            (["--ocsp-required"], "--ocsp-required goes with --ocsp."),
            (
                ["--ocsp-timeout", "1", "--ocsp-check-chain"],
                "--ocsp-check-chain, --ocsp-timeout go with",
            ),
            (["--ocsp", "--ocsp-responder", "127.0.0.1:8888"], "is not an http:// or https:// URL"),
            (["--ocsp", "--ocsp-timeout", "0"], "--ocsp-timeout wants a number at least 0.001"),
            (
                ["--ocsp", "--ocsp-timeout", "5", "--handshake-timeout", "2"],
                "--ocsp-timeout 5 must be shorter than --handshake-timeout 2",
            ),
            (["--ocsp", "--ocsp-timeout", "inf"], "--ocsp-timeout inf must be shorter than"),
            (["--ocsp", "--ocsp-responder", "http://[::1"], "is not an http:// or https:// URL"),
            (["--ocsp", "--ocsp-responder", "http://h:99999"], "is not an http:// or https:// URL"),
            (["--tls-groups", "X25519:X2559"], "'X2559' is not a TLS group OpenSSL"),
            (["--tls-groups", ""], "'' is not a TLS group"),
            (["--tls-sigalgs", "ECDSA+MD9"], "does not accept this list of signature algorithms"),
            (["--reload-interval", "-1"], "--reload-interval wants a number"),
            (["--port", "eighty"], "--port wants a number from 0 to 65535, not 'eighty'"),
            (["--port", "70000"], "--port wants a number from 0 to 65535, not '70000'"),
            (
                ["--forward", "127.0.0.1:8090"],
                "--forward 127.0.0.1:8090 is not an endpoint description; did you mean"
                " tcp:127.0.0.1:8090?",
            ),
            (["--forward", "localhost:80"], "did you mean tcp:localhost:80?"),
            (["--forward", "[::1]:80"], "did you mean tcp:\\:\\:1:80?"),
            (["--forward", "backend.example:80"], "did you mean tcp:backend.example:80?"),
        ]:
            error = self.assertRaises(UsageError, parse, *argv)
            self.assertIn(fragment, str(error), argv)

    def test_oneLineUnderTwistd(self) -> None:
        """
        Under twistd (the options have a parent), a usage error, a bad
        config file or an unknown option ends the process with one line,
        C{mtlsd: ...}, instead of the usage followed by the error.
        """
        for argv, line in [
            (["--cert", "s.pem"], "mtlsd: --cert needs --client-certs"),
            (["--config", "/nonexistent.toml"], "mtlsd: config file /nonexistent.toml"),
            (
                ["--bogus"],
                "mtlsd: option --bogus not recognized (twistd mtlsd --help lists the options)",
            ),
            (["--port", "abc"], "mtlsd: --port wants a number from 0 to 65535, not 'abc'"),
        ]:
            options = Options()
            options.parent = {"nodaemon": True}  # type: ignore[assignment]
            error = self.assertRaises(SystemExit, options.parseOptions, argv)
            self.assertTrue(str(error.code).startswith(line), (argv, error.code))
            self.assertNotIn("\n", str(error.code))


class MakeServiceTests(SynchronousTestCase):
    """
    L{makeService} builds listening mutual-TLS services, or exits with one
    line for a bad file.
    """

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.mkdir(self.dir)

    def start(self, *argv: str) -> MemoryReactor:
        reactor = MemoryReactorClock()
        service = makeService(parse(*argv), reactor)
        service.startService()
        self.addCleanup(service.stopService)
        return reactor

    def test_developmentPKI(self) -> None:
        """
        Without TLS files the service creates the development PKI and
        listens on port 8082 of all addresses: C{::}, IPv4 and IPv6, on a
        host with dual-stack IPv6, else C{0.0.0.0}.
        """
        pki = os.path.join(self.dir, "pki")
        reactor = self.start("--pki", pki)
        self.assertEqual(
            sorted(os.listdir(pki)),
            sorted("ca.crt ca.key client.crt client.key crl.pem server.crt server.key".split()),
        )
        [(port, factory, backlog, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (8082, hostAllInterfaces()))
        self.assertIsInstance(factory, TLSMemoryBIOFactory)

    def test_listen(self) -> None:
        """
        Each C{--listen} endpoint gets mutual TLS.
        """
        reactor = self.start(
            "--pki", os.path.join(self.dir, "pki"), "--listen", "tcp:9443:interface=127.0.0.1",
            "--listen", "unix:" + os.path.join(self.dir, "s"),
        )  # fmt: skip
        self.assertEqual([(p, i) for p, f, b, i in reactor.tcpServers], [(9443, "127.0.0.1")])
        self.assertEqual(len(reactor.unixServers), 1)
        self.assertIsInstance(reactor.unixServers[0][1], TLSMemoryBIOFactory)

    def test_badFileExits(self) -> None:
        """
        A bad file ends start-up with one line naming it.
        """
        missing = os.path.join(self.dir, "missing.pem")
        error = self.assertRaises(
            SystemExit, makeService, parse("--cert", missing, "--client-certs", missing),
            MemoryReactorClock(),
        )  # fmt: skip
        self.assertEqual(
            str(error.code), f"mtlsd: server certificate file {missing} does not exist."
        )

    def test_portZero(self) -> None:
        """
        C{--port 0} asks for any free port, not the default.
        """
        reactor = self.start("--pki", os.path.join(self.dir, "pki"), "--port", "0")
        self.assertEqual(reactor.tcpServers[0][0], 0)

    def test_cannotListen(self) -> None:
        """
        A port that cannot be bound stops start-up with one line.
        """
        import socket

        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        self.addCleanup(taken.close)
        port = taken.getsockname()[1]
        from twisted.internet import reactor

        service = makeService(
            parse(
                "--pki", os.path.join(self.dir, "pki"), "--port", str(port), "-i", "127.0.0.1",
                "--reload-interval", "0",  # no reloader left running on the real reactor
            ),
            reactor,
        )  # fmt: skip
        error = self.assertRaises(SystemExit, service.startService)
        self.assertEqual(
            str(error.code),
            f"mtlsd: cannot listen on --port {port}: Couldn't listen on"
            f" 127.0.0.1:{port}: [Errno 98] Address already in use.",
        )

    def test_badAllowEntry(self) -> None:
        """
        A malformed allow-list entry stops start-up with one line.
        """
        error = self.assertRaises(
            SystemExit,
            makeService,
            parse("--pki", os.path.join(self.dir, "pki"), "--allow-fingerprint", "xyz"),
            MemoryReactorClock(),
        )
        self.assertIn("--allow-fingerprint 'xyz' is not a SHA-256 fingerprint", str(error.code))

    def test_encryptedKeyAndPKCS12(self) -> None:
        """
        An encrypted key with C{--key-passphrase-file}, and a PKCS#12 bundle
        as C{--cert}, start the daemon; a key readable by others is warned
        about.
        """
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.serialization import pkcs12
        from twisted.logger import globalLogPublisher
        from twisted.test.proto_helpers import EventLoggingObserver

        events = EventLoggingObserver.createWithCleanup(
            self,  # type: ignore[arg-type]
            globalLogPublisher,
        )
        server, client = selfSigned("server"), selfSigned("client")
        files = {
            "server.crt": certificatePEM(server.certificate),
            "server.key": server.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"s3cret"),
            ),
            "passphrase": b"s3cret\n",
            "clients.pem": certificatePEM(client.certificate),
            "bundle.p12": pkcs12.serialize_key_and_certificates(
                b"server", server.key, server.certificate, None,
                serialization.BestAvailableEncryption(b"s3cret"),
            ),
        }  # fmt: skip
        for name, data in files.items():
            with open(os.path.join(self.dir, name), "wb") as f:
                f.write(data)
            os.chmod(os.path.join(self.dir, name), 0o600)
        os.chmod(os.path.join(self.dir, "server.key"), 0o644)
        path = lambda name: os.path.join(self.dir, name)  # noqa: E731
        common = [
            "--client-certs",
            path("clients.pem"),
            "--key-passphrase-file",
            path("passphrase"),
        ]
        self.start(
            "--cert", path("server.crt"), "--key", path("server.key"), "--port", "1", *common
        )
        self.assertTrue(any("chmod 600" in e.get("problem", "") for e in events))
        self.start("--cert", path("bundle.p12"), "--port", "2", *common)
        error = self.assertRaises(
            SystemExit,
            makeService,
            parse(
                "--cert",
                path("server.crt"),
                "--key",
                path("server.key"),
                "--client-certs",
                path("clients.pem"),
            ),
            MemoryReactorClock(),
        )
        self.assertIn("--key-passphrase-file", str(error.code))

    def test_badApp(self) -> None:
        """
        An C{--app} that cannot be loaded, or is not a factory, is refused;
        a module that cannot be imported is named, with the reason (twistd
        does not look in the current folder).
        """
        pki = os.path.join(self.dir, "pki")
        for name, fragment in [
            (
                "whoami_web.site",
                "no module named whoami_web on the module path; twistd does not look in the"
                " current folder: run it as PYTHONPATH=. twistd",
            ),
            ("os.nothing", "--app os.nothing cannot be loaded"),
            ("json.decoder.JSONDecodeError", "--app json.decoder.JSONDecodeError cannot be loaded"),
            ("os.getcwd", "did not return an IProtocolFactory"),
            ("echoes", "give the dotted name of a callable in a module"),
        ]:
            error = self.assertRaises(
                SystemExit, makeService, parse("--pki", pki, "--app", name), MemoryReactorClock()
            )
            self.assertIn(fragment, str(error.code))

    def test_userApp(self) -> None:
        """
        C{--app} takes the dotted name of a callable returning a factory.
        """
        reactor = self.start(
            "--pki", os.path.join(self.dir, "pki"), "--app", "mtlsd.test.test_tap.appFactory"
        )
        [(port, factory, backlog, interface)] = reactor.tcpServers
        self.assertIs(factory.wrappedFactory.wrappedFactory, _APP)  # type: ignore[attr-defined]

    def test_expiredServerCertificateWarns(self) -> None:
        """
        An expired server certificate starts, with a loud warning.
        """
        from twisted.logger import globalLogPublisher
        from twisted.test.proto_helpers import EventLoggingObserver

        events = EventLoggingObserver.createWithCleanup(
            self,  # type: ignore[arg-type]
            globalLogPublisher,
        )
        old = selfSigned("old", notBefore=hoursAgo(48), days=1)
        cert = os.path.join(self.dir, "old.pem")
        with open(cert, "wb") as f:
            f.write(certificatePEM(old.certificate) + keyPEM(old.key))
        self.start("--cert", cert, "--client-certs", cert, "--port", "1")
        self.assertTrue(any("EXPIRED" in e.get("problem", "") for e in events))


_APP = __import__("twisted.internet.protocol", fromlist=["Factory"]).Factory()


def appFactory():
    return _APP


class DescriptorLimitTests(SynchronousTestCase):
    def test_raisedToHardLimit(self) -> None:
        """
        The daemon raises its soft limit on open files to the hard one: the
        usual 1,024 would refuse clients long before memory runs out.
        """
        import resource

        from mtlsd._tap import raiseDescriptorLimit

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        low = min(256, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
        self.assertEqual(raiseDescriptorLimit(), (low, hard))
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE), (hard, hard))
        self.assertEqual(raiseDescriptorLimit(), (hard, hard))
