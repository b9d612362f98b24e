"""
Tests for L{mtlsd._config}: TOML configuration files as command-line
arguments, and the command line overriding them.
"""

from __future__ import annotations

import os

from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor
from twisted.python import usage
from twisted.trial.unittest import SkipTest, SynchronousTestCase

import mtlsd
from mtlsd import ConfigurationError
from mtlsd._config import configArguments, mergeArguments, repeatableOptions
from mtlsd._options import _REPEATABLE, Options

CONTRIB = os.path.join(os.path.dirname(mtlsd.__file__), "..", "contrib", "mtlsd.toml")
SERVICES = os.path.join(os.path.dirname(CONTRIB), "services.toml")


class ConfigTestCase(SynchronousTestCase):
    def write(self, text: str | bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
        return path

    def arguments(self, text: str) -> list[str]:
        return configArguments(self.write(text), Options())

    def assertError(self, text: str | bytes, *fragments: str) -> str:
        """
        Reading C{text} fails with one sentence naming the file and holding
        every fragment.
        """
        path = self.write(text)
        message = str(self.assertRaises(ConfigurationError, configArguments, path, Options()))
        for fragment in (path, *fragments):
            self.assertIn(fragment, message)
        self.assertNotIn("\n", message)
        self.assertTrue(message.endswith("."), message)
        return message


class ConfigArgumentsTests(ConfigTestCase):
    """
    L{configArguments} maps every kind of option.
    """

    def test_everyKind(self) -> None:
        """
        Parameters (strings and numbers), flags, and repeatable options with
        an array or a single value become arguments, in the file's order.
        """
        self.assertEqual(
            self.arguments(
                'port = 8443\nclient-certs = ["a.pem", "b.pem"]\ncrl-required = true\n'
                'allow-cn = "web"\nkeep-live-sessions = false\nhandshake-timeout = 2.5\n'
                "reload-interval = 0\ncert = 's.pem'\nallow-ip = []\n"
            ),
            [
                "--port", "8443", "--client-certs", "a.pem", "--client-certs", "b.pem",
                "--crl-required", "--allow-cn", "web", "--handshake-timeout", "2.5",
                "--reload-interval", "0", "--cert", "s.pem",
            ],
        )  # fmt: skip

    def test_parsed(self) -> None:
        """
        C{Options} parses the arguments into the values the file gives.
        """
        options = Options()
        options.parseOptions(
            self.arguments(
                'port = 8443\ncert = "s.pem"\nclient-certs = ["a.pem", "b.pem"]\n'
                'crl = "c.crl"\ncrl-required = true\ncrl-check-chain = false\n'
                "verify-depth = 2\nhandshake-timeout = 2.5\n"
            )
        )
        self.assertEqual(
            (options["port"], options["cert"], options["client-certs"], options["crl"]),
            (8443, ["s.pem"], ["a.pem", "b.pem"], ["c.crl"]),
        )
        self.assertEqual((options["crl-required"], options["crl-check-chain"]), (1, 0))
        self.assertEqual((options["verify-depth"], options["handshake-timeout"]), (2, 2.5))

    def test_clientCA(self) -> None:
        """
        C{client-ca} in the file is C{--client-ca}, repeatable.
        """
        options = Options()
        options.parseOptions(
            self.arguments('cert = "s.pem"\nclient-ca = ["old-ca.pem", "other-ca.pem"]\n')
        )
        self.assertEqual(options["client-ca"], ["old-ca.pem", "other-ca.pem"])

    def test_empty(self) -> None:
        """
        An empty file gives no arguments.
        """
        self.assertEqual(self.arguments("# nothing\n"), [])

    def test_unknownKey(self) -> None:
        """
        A key that is not an option is an error naming it and the file,
        with a hint when it is close to an option.
        """
        self.assertError("pork = 1\n", "unknown key 'pork'", "(did you mean 'port'?)")
        message = self.assertError('zzz = "x"\n', "unknown key 'zzz'")
        self.assertNotIn("did you mean", message)
        self.assertError('client_certs = ["a"]\n', "'client_certs'", "'client-certs'")
        self.assertError("p = 1\n", "unknown key 'p'")
        self.assertError("[allow]\ncn = 'x'\n", "unknown key 'allow'")

    def test_forbiddenKeys(self) -> None:
        """
        C{config}, C{help} and C{version} cannot be set in a file.
        """
        self.assertError('config = "other.toml"\n', "'config'", "cannot be set")
        self.assertError("help = true\n", "'help'", "cannot be set")
        self.assertError("version = true\n", "'version'", "cannot be set")

    def test_badTypes(self) -> None:
        """
        A value of the wrong type is an error naming the key and the type.
        """
        self.assertError('crl-required = "yes"\n', "crl-required is a flag", "'yes'")
        self.assertError("crl-required = 1\n", "true or false", "the number 1")
        self.assertError("port = true\n", "port takes a string or a number", "boolean true")
        self.assertError("port = [1, 2]\n", "port takes one string or number, not an array")
        self.assertError("port = {a = 1}\n", "port", "a table")
        self.assertError("cert = 1979-05-27T07:32:00Z\n", "cert", "a date-time")
        self.assertError("cert = 1979-05-27\n", "a date")
        self.assertError("cert = 07:32:00\n", "a time")
        self.assertError('client-certs = ["a.pem", ["b.pem"]]\n', "client-certs", "an array")
        self.assertError("allow-cn = [false]\n", "allow-cn takes strings or numbers", "false")

    def test_badValue(self) -> None:
        """
        A value of the right type but out of range is left to the options
        class, whose error names the option.
        """
        options = Options()
        error = self.assertRaises(
            usage.UsageError, options.parseOptions, self.arguments("port = 70000\n")
        )
        self.assertIn("--port", str(error))

    def test_syntaxError(self) -> None:
        """
        A TOML syntax error is one sentence with the file and the parser's
        line and column.
        """
        self.assertError('port = 8443\ncert = "s.pem\n', "not valid TOML", "line 2")
        self.assertError("port = 1\nport = 2\n", "not valid TOML", "line 2")

    def test_notUTF8(self) -> None:
        """
        A file that is not UTF-8 is an error naming the line.
        """
        self.assertError(b'port = 1\ncert = "\xff"\n', "not valid TOML", "line 2 is not UTF-8")

    def test_missingFile(self) -> None:
        """
        A missing file, or a directory, is one sentence naming it.
        """
        path = self.mktemp()
        error = self.assertRaises(ConfigurationError, configArguments, path, Options())
        self.assertEqual(str(error), f"config file {path} does not exist.")
        os.mkdir(path)
        error = self.assertRaises(ConfigurationError, configArguments, path, Options())
        self.assertEqual(str(error), f"config file {path} is a directory.")

    def test_newOptions(self) -> None:
        """
        The known keys come from the options class: options added by a
        subclass (a parameter, a flag, option methods with and without an
        argument, a repeatable one) are keys at once.
        """

        class More(Options):
            optParameters = [["x-format", None, "text", "A parameter."]]
            optFlags = [["x-quiet", None, "A flag."]]

            def __init__(self) -> None:
                super().__init__()
                self["x-sink"] = []

            def opt_x_sink(self, description: str) -> None:
                self["x-sink"].append(description)

            def opt_x_workers(self, count: str) -> None:
                self["x-workers"] = int(count)

            def opt_x_debug(self) -> None:
                self["x-debug"] = True

        path = self.write(
            'x-format = "json"\nx-quiet = true\nx-sink = ["tcp:9100", "unix:/m"]\n'
            "x-workers = 4\nx-debug = true\n"
        )
        self.assertEqual(
            configArguments(path, More()),
            [
                "--x-format", "json", "--x-quiet", "--x-sink", "tcp:9100",
                "--x-sink", "unix:/m", "--x-workers", "4", "--x-debug",
            ],
        )  # fmt: skip
        self.assertRaises(ConfigurationError, configArguments, path, Options())
        self.assertEqual(repeatableOptions(More()), frozenset({*_REPEATABLE, "x-sink"}))
        self.assertRaises(
            ConfigurationError, configArguments, self.write("x-workers = [1, 2]\n"), More()
        )


class RepeatableOptionsTests(SynchronousTestCase):
    def test_repeatable(self) -> None:
        """
        The repeatable options of C{Options} are those of C{_REPEATABLE},
        found from the class; parsing does not change them.
        """
        self.assertEqual(repeatableOptions(Options()), frozenset(_REPEATABLE))
        options = Options()
        options.parseOptions(["--listen", "tcp:1"])
        self.assertEqual(repeatableOptions(options), frozenset(_REPEATABLE))


class PrecedenceTests(ConfigTestCase):
    """
    The command line overrides the file when the caller parses
    C{mergeArguments(configArguments(...), commandLine, ...)}.
    """

    FILE = (
        'port = 8443\ncert = "s.pem"\nclient-certs = ["a.pem", "b.pem"]\n'
        'crl = ["a.crl"]\nallow-cn = "web"\ncrl-required = true\n'
    )

    def parse(self, commandLine: list[str], exact: bool = True) -> Options:
        options = Options()
        fileArguments = configArguments(self.write(self.FILE), options)
        options.parseOptions(
            mergeArguments(fileArguments, commandLine, _REPEATABLE, options if exact else None)
        )
        return options

    def test_parameter(self) -> None:
        """
        A parameter on the command line wins: C{usage.Options} keeps the
        last value.
        """
        for exact in (True, False):
            options = self.parse(["--port", "9000"], exact)
            self.assertEqual(options["port"], 9000)
            self.assertEqual(self.parse(["-p", "9001"], exact)["port"], 9001)
            self.assertEqual(self.parse([], exact)["port"], 8443)

    def test_repeatable(self) -> None:
        """
        A repeatable option on the command line replaces the file's list;
        the file's other repeatable options stay.
        """
        for exact in (True, False):
            options = self.parse(["--client-certs", "c.pem", "--client-certs=d.pem"], exact)
            self.assertEqual(options["client-certs"], ["c.pem", "d.pem"])
            self.assertEqual((options["crl"], options["allow-cn"]), (["a.crl"], ["web"]))
            self.assertEqual(self.parse([], exact)["client-certs"], ["a.pem", "b.pem"])

    def test_flagStays(self) -> None:
        """
        A flag set in the file stays set: flags cannot be switched off.
        """
        self.assertTrue(self.parse(["--port", "9000"])["crl-required"])

    def test_abbreviated(self) -> None:
        """
        Given the options class, an abbreviation that C{usage.Options}
        accepts counts, and a value that looks like an option does not.
        """
        options = self.parse(["--client-certs", "c.pem", "--allow-dn", "--crl"])
        self.assertEqual(options["client-certs"], ["c.pem"])
        self.assertEqual((options["allow-dns"], options["crl"]), (["--crl"], ["a.crl"]))

    def test_afterDoubleDash(self) -> None:
        """
        Without the options class, arguments after C{--} are not options.
        """
        self.assertEqual(
            mergeArguments(["--crl", "a", "--port", "1"], ["--", "--crl"], ["crl"]),
            ["--crl", "a", "--port", "1", "--", "--crl"],
        )

    def test_badCommandLine(self) -> None:
        """
        A command line that does not parse is left for the parser to
        report.
        """
        options = Options()
        arguments = mergeArguments(["--crl", "a"], ["--crl", "b", "--nope"], ["crl"], options)
        self.assertEqual(arguments, ["--crl", "a", "--crl", "b", "--nope"])
        self.assertRaises(usage.UsageError, options.parseOptions, arguments)


class ContribTests(SynchronousTestCase):
    def test_example(self) -> None:
        """
        C{contrib/mtlsd.toml} is a valid configuration for C{Options}, and
        its C{listen} endpoints are valid descriptions.
        """
        if not os.path.exists(CONTRIB):
            raise SkipTest(f"{CONTRIB} is not there (installed package?)")
        options = Options()
        options.parseOptions(configArguments(CONTRIB, options))
        self.assertTrue(options["cert"] and options["client-certs"] and options["listen"])
        for description in options["listen"]:
            serverFromString(MemoryReactor(), description)

    def test_servicesExample(self) -> None:
        """
        C{contrib/services.toml} is a valid configuration of three services
        (a TCP relay, HTTP forwarding, a UNIX socket backend), each
        inheriting the defaults it does not replace.
        """
        if not os.path.exists(SERVICES):
            raise SkipTest(f"{SERVICES} is not there (installed package?)")
        options = Options()
        options.parseOptions(["--config", SERVICES])
        services = {service.name: service.options for service in options.services}
        self.assertEqual(list(services), ["db", "api", "jobs"])
        self.assertEqual(services["db"]["forward"], "tcp:127.0.0.1:5432")
        self.assertEqual(services["api"]["forward-http"], "tcp:127.0.0.1:8080")
        self.assertEqual(services["jobs"]["forward"], "unix:/run/jobs/app.sock")
        self.assertEqual(services["db"]["client-certs"], ["/etc/mtlsd/tls/clients-ca.pem"])
        self.assertEqual(len(services["api"]["client-certs"]), 2)
        self.assertEqual(services["jobs"]["cert"], ["/etc/mtlsd/tls/jobs.pem"])
        self.assertEqual({s["handshake-timeout"] for s in services.values()}, {5})
        for service in services.values():
            for description in service["listen"]:
                serverFromString(MemoryReactor(), description)
