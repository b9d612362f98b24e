"""
The examples of C{docs/}, run as a user runs them, next to a development
PKI.
"""

from __future__ import annotations

import os
import shutil
import socket
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

    def runExample(self, name: str, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, os.path.join(EXAMPLES, name), *args],
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
        client certificate is told its CN, over HTTP/1.1 and HTTP/2; curl
        without one is refused; C{/admin/} answers 403 to it and serves the
        C{admin} client.  C{treq_client.py} (twisted.web's Agent with the
        client certificate) gets the same answers.  The same resource
        served by C{twistd mtlsd --app} answers the same.
        """
        if CURL is None:
            raise SkipTest("curl is not installed")
        env = {"PYTHONPATH": EXAMPLES}
        web = Daemon(
            self.directory,
            [],
            command=[
                TWISTD, "-n", "--pidfile=", "--logfile=-", "web", "--class", "whoami_web.Root",
                "--listen", "mtls:0:interface=127.0.0.1:certKey=mtlsd-pki/server.crt"
                ":privateKey=mtlsd-pki/server.key:clientCerts=mtlsd-pki/ca.crt",
            ],
            env=env,
        )  # fmt: skip
        self.addCleanup(web.stop)
        port = web.waitForListening()
        client = ("--cert", "mtlsd-pki/client.crt", "--key", "mtlsd-pki/client.key")
        for version in ("--http1.1", "--http2"):
            answer = self.curl(port, *client, version, "-w", "%{http_version}")
            self.assertEqual(answer.returncode, 0, answer.stderr)
            self.assertTrue(answer.stdout.startswith("CN=client\nsha256="), answer.stdout)
            self.assertTrue(answer.stdout.endswith(version[6:]), answer.stdout)
        self.assertNotEqual(self.curl(port).returncode, 0)
        web.waitForLog(r"rejected 127\.0\.0\.1:\d+: no client certificate")

        url = f"https://localhost:{port}/"
        self.assertTrue(self.runExample("treq_client.py", url).startswith("200 CN=client\n"))
        self.assertEqual(
            self.runExample("treq_client.py", url + "admin/"),
            "403 Forbidden: your client certificate is not allowed here.\n",
        )
        with socket.socket() as closed:  # bound, not listening: refused
            closed.bind(("127.0.0.1", 0))
            refused = subprocess.run(
                [sys.executable, os.path.join(EXAMPLES, "treq_client.py"),
                 f"https://localhost:{closed.getsockname()[1]}/"],
                cwd=self.directory, capture_output=True, text=True, timeout=DEADLINE,
                env=environment(),
            )  # fmt: skip
        self.assertEqual(refused.returncode, 1)
        self.assertEqual(len(refused.stderr.splitlines()), 1, refused.stderr)
        self.assertIn("cannot connect to https://localhost:", refused.stderr)
        issued = subprocess.run([MTLSD, "pki", "issue", "admin"], cwd=self.directory)
        self.assertEqual(issued.returncode, 0)
        answer = self.runExample("treq_client.py", "--cert", "admin", url + "admin/")
        self.assertTrue(answer.startswith("200 CN=admin\n"), answer)
        web.waitForLog(r"forbidden 127\.0\.0\.1:\d+: CN=client: GET /admin/")

        daemon = Daemon(self.directory, ["--port", "0", "--app", "whoami_web.site"], env=env)
        self.addCleanup(daemon.stop)
        answer = self.curl(daemon.waitForListening(), *client)
        self.assertTrue(answer.stdout.startswith("CN=client\n"), answer.stdout + answer.stderr)

    def test_treqAgainstHTTPMode(self) -> None:
        """
        C{treq_client.py} against C{twistd mtlsd --forward-http} in front of
        C{twistd web} serving a file: the answer comes back through the
        mode.
        """
        os.makedirs(os.path.join(self.directory, "www"))
        with open(os.path.join(self.directory, "www", "hello.txt"), "w") as f:
            f.write("hello through mtlsd\n")
        web = Daemon(
            self.directory,
            [],
            command=[TWISTD, "-n", "--pidfile=", "--logfile=-", "web", "--listen",
                     "tcp:0:interface=127.0.0.1", "--path", "www"],
        )  # fmt: skip
        self.addCleanup(web.stop)
        backend = web.waitForListening(pattern=r"Site starting on (\d+)")
        daemon = Daemon(
            self.directory, ["--port", "0", "--forward-http", f"tcp:127.0.0.1:{backend}"]
        )
        self.addCleanup(daemon.stop)
        port = daemon.waitForListening()
        self.assertEqual(
            self.runExample("treq_client.py", f"https://localhost:{port}/hello.txt"),
            "200 hello through mtlsd\n",
        )
