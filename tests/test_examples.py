"""
The examples of C{docs/}, run as a user runs them, next to a development
PKI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests._process import DEADLINE, MTLSD, TWISTD, Daemon, environment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "docs", "examples")
CURL = shutil.which("curl")


class ExampleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.mkdir(self.directory)
        init = subprocess.run([MTLSD, "pki", "init"], cwd=self.directory, capture_output=True)
        self.assertEqual(init.returncode, 0, init.stderr)

    def runExample(self, name: str) -> str:
        result = subprocess.run(
            [sys.executable, os.path.join(EXAMPLES, name)],
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            env=environment(),
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout

    def test_greeter(self) -> None:
        """
        C{greeter.py}: a protocol served through mtlsd's server endpoint
        greets the client of mtlsd's client endpoint by its certificate's CN.
        """
        self.assertEqual(self.runExample("greeter.py"), "hello, client\n")

    def test_strings(self) -> None:
        """
        C{strings.py}: the same with C{mtls:} endpoint strings.
        """
        self.assertEqual(self.runExample("strings.py"), "hello, client\n")

    def test_testing(self) -> None:
        """
        C{testing_example.py}: the tests of a protocol written with
        L{mtlsd.testing}, in memory, pass.
        """
        self.runExample("testing_example.py")

    def curl(self, port: int, *args: str) -> subprocess.CompletedProcess[str]:
        assert CURL is not None
        return subprocess.run(
            [CURL, "-s", "--max-time", "10", "--cacert", "mtlsd-pki/ca.crt", *args,
             f"https://localhost:{port}/"],
            cwd=self.directory, capture_output=True, text=True, timeout=DEADLINE,
        )  # fmt: skip

    def test_webResource(self) -> None:
        """
        C{whoami_web.py} under C{twistd web --listen mtls:...}: curl with the
        client certificate is told its CN; curl without one is refused.
        The same resource served by C{twistd mtlsd --app} answers the same.
        """
        if CURL is None:
            raise SkipTest("curl is not installed")
        env = {"PYTHONPATH": EXAMPLES}
        web = Daemon(
            self.directory,
            [],
            command=[
                TWISTD, "-n", "--pidfile=", "--logfile=-", "web", "--class", "whoami_web.WhoAmI",
                "--listen", "mtls:0:interface=127.0.0.1:certKey=mtlsd-pki/server.crt"
                ":privateKey=mtlsd-pki/server.key:clientCerts=mtlsd-pki/ca.crt",
            ],
            env=env,
        )  # fmt: skip
        self.addCleanup(web.stop)
        port = web.waitForListening()
        client = ("--cert", "mtlsd-pki/client.crt", "--key", "mtlsd-pki/client.key")
        answer = self.curl(port, *client)
        self.assertEqual(answer.returncode, 0, answer.stderr)
        self.assertTrue(answer.stdout.startswith("CN=client\nsha256="), answer.stdout)
        self.assertNotEqual(self.curl(port).returncode, 0)
        web.waitForLog(r"rejected 127\.0\.0\.1:\d+: no client certificate")

        daemon = Daemon(self.directory, ["--port", "0", "--app", "whoami_web.site"], env=env)
        self.addCleanup(daemon.stop)
        answer = self.curl(daemon.waitForListening(), *client)
        self.assertTrue(answer.stdout.startswith("CN=client\n"), answer.stdout + answer.stderr)
