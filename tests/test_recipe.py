"""
Black-box tests of the classic recipe's trust: certificates made with the
C{openssl} command exactly as the README shows, against a real C{twistd
mtlsd}.  A client certificate listed in C{--client-certs} admits itself, not
what its key signs; C{--client-ca} trusts a CA whatever its keyUsage.
"""

from __future__ import annotations

import os
import ssl

from twisted.trial.unittest import SynchronousTestCase

from tests._process import mtlsd, openssl, receiveExactly, recipeCertificate, tlsClient
from tests.test_daemon import DaemonTestMixin

ISSUED_THROUGH_CLIENT = (
    r"rejected 127\.0\.0\.1:\d+: issuer is a client certificate, not a CA \(depth 1, CN=client1\)$"
)


def signWith(cwd: str, name: str, issuer: str, *extensions: str) -> tuple[str, str]:
    """
    Make C{name.crt}, a certificate for CN=C{name} signed with C{issuer}'s
    key (C{issuer.crt}, C{issuer.key}), with C{openssl x509 -req}.
    """
    openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=cwd,
    )  # fmt: skip
    extfile = []
    if extensions:
        with open(os.path.join(cwd, f"{name}.ext"), "w") as f:
            f.write("\n".join(extensions) + "\n")
        extfile = ["-extfile", f"{name}.ext"]
    openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{issuer}.crt", "-CAkey", f"{issuer}.key",
        "-CAcreateserial", "-days", "30", "-out", f"{name}.crt", *extfile, cwd=cwd,
    )  # fmt: skip
    return os.path.join(cwd, f"{name}.crt"), os.path.join(cwd, f"{name}.key")


class RecipeTrustTests(DaemonTestMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.requireOpenSSL()
        self.directory = self.workDirectory()
        recipeCertificate(self.directory, "server", "localhost", subjectAltName="DNS:localhost")
        recipeCertificate(self.directory, "client1", "client1")
        recipeCertificate(self.directory, "client2", "client2", ec=True)
        with open(os.path.join(self.directory, "clients.pem"), "wb") as bundle:
            for name in ("client1", "client2"):
                with open(os.path.join(self.directory, f"{name}.crt"), "rb") as f:
                    bundle.write(f.read())
        signWith(self.directory, "mallory", "client1")

    def start(self, *args: str):
        return self.startDaemon(
            self.directory, "--cert", "server.crt", "--key", "server.key", *args
        )

    def echo(self, port: int, name: str) -> ssl.SSLSocket:
        sock = tlsClient(
            port,
            os.path.join(self.directory, f"{name}.crt"),
            os.path.join(self.directory, f"{name}.key"),
            os.path.join(self.directory, "server.crt"),
            "localhost",
        )
        self.addCleanup(sock.close)
        sock.sendall(b"hello")
        self.assertEqual(receiveExactly(sock, 5), b"hello")
        return sock

    def test_clientKeyCannotMintClients(self) -> None:
        """
        A certificate signed with client1's key (the recipe's certificates
        are CA:TRUE without keyUsage) is refused during the handshake: the
        client gets a TLS alert, C{mtlsd connect} says the server rejected
        its certificate, and the log names the issuer.  client1 and client2
        still get in; start-up says what each bundle trusts.
        """
        daemon = self.start("--client-certs", "clients.pem")
        daemon.waitForLog(r"trusted: clients\.pem: 2 client certificates; issuing CAs: none$")
        self.echo(daemon.port, "client1")
        self.echo(daemon.port, "client2")
        result = mtlsd(
            "connect", f"localhost:{daemon.port}", "--cert", "mallory.crt", "--key",
            "mallory.key", "--ca", "server.crt", cwd=self.directory, input=b"hi\n",
        )  # fmt: skip
        self.assertEqual((result.returncode, result.stdout), (1, b""))
        self.assertOneLine(
            result.stderr, "mtlsd connect: ", "the server rejected this client's certificate ("
        )
        daemon.waitForLog(ISSUED_THROUGH_CLIENT)
        self.assertEqual(daemon.accepted()[-1][1], "client2")
        self.assertNotIn("every certificate issued by CA", daemon.log())

    def test_clientCA(self) -> None:
        """
        Given with C{--client-ca}, client1 is trusted as an issuing CA
        whatever its keyUsage: the certificate its key signed gets in.
        """
        daemon = self.start("--client-certs", "client2.crt", "--client-ca", "client1.crt")
        daemon.waitForLog(r"trusted: client1\.crt: 0 client certificates; issuing CAs: CN=client1$")
        self.echo(daemon.port, "mallory")
        self.echo(daemon.port, "client1")
        self.assertEqual([cn for _, cn, _, _ in daemon.accepted()], ["mallory", "client1"])
        daemon.waitForLog(r"every certificate issued by CA CN=client1 is admitted")

    def test_realCAAndPinnedLeaf(self) -> None:
        """
        A CA by intent (CA:TRUE, keyUsage keyCertSign) in C{--client-certs}
        still admits its clients; a leaf it issued listed alone is a pin,
        which admits that leaf only.
        """
        openssl(
            "req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-days", "30",
            "-subj", "/CN=Real CA", "-keyout", "ca.key", "-out", "ca.crt",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=self.directory,
        )  # fmt: skip
        leaf = ("basicConstraints=CA:FALSE", "extendedKeyUsage=clientAuth")
        signWith(self.directory, "alice", "ca", *leaf)
        signWith(self.directory, "bob", "ca", *leaf)
        daemon = self.start("--client-certs", "ca.crt")
        daemon.waitForLog(r"trusted: ca\.crt: 0 client certificates; issuing CAs: CN=Real CA$")
        self.echo(daemon.port, "alice")
        self.echo(daemon.port, "bob")

        pinned = self.start("--client-certs", "alice.crt")
        self.echo(pinned.port, "alice")
        self.assertRaises(ssl.SSLError, self.echo, pinned.port, "bob")
        pinned.waitForLog(r"rejected 127\.0\.0\.1:\d+: unable to get local issuer certificate")
