"""
Black-box tests of privileges and secrets: twistd's C{--uid}/C{--gid} after
binding a port below 1024, and no private key material in anything mtlsd
prints (logs, metrics, error messages, C{mtlsd inspect}).
"""

from __future__ import annotations

import base64
import os
import socket

from cryptography.hazmat.primitives import serialization
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests._process import Daemon, mtlsd, pkiClient, receiveExactly
from tests.test_daemon import DaemonTestMixin
from tests.test_production import get


def freePrivilegedPort() -> int:
    for port in range(600, 1024):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SkipTest("no free port below 1024")


def ids(pid: int) -> tuple[int, int]:
    """
    The real user and group ids of a process.
    """
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid"):
                found[key] = int(value.split()[0])
    return found["Uid"], found["Gid"]


class PrivilegeTests(DaemonTestMixin, SynchronousTestCase):
    def test_dropAfterBinding(self) -> None:
        """
        Started as root with C{--uid nobody --gid nogroup}, the daemon binds
        a port below 1024, then runs as nobody and serves; the key nobody
        cannot read is named once (its changes cannot be followed), and no
        reload fails.
        """
        if os.geteuid() != 0:
            raise SkipTest("needs root")
        import grp
        import pwd

        nobody, nogroup = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
        directory = self.workDirectory()
        os.chmod(directory, 0o755)
        port = freePrivilegedPort()
        daemon = Daemon(directory, [], command=[
            os.path.join(os.path.dirname(__import__("sys").executable), "twistd"),
            "-n", "--pidfile=", "--logfile=-", "--uid", "nobody", "--gid", "nogroup",
            "mtlsd", "--port", str(port), "--interface", "127.0.0.1", "--reload-interval", "0.1",
        ])  # fmt: skip
        self.addCleanup(daemon.stop)
        self.assertEqual(daemon.waitForListening(), port)
        daemon.waitForLog("cannot read mtlsd-pki/server.key as this user")
        self.assertEqual(ids(daemon.process.pid), (nobody, nogroup))
        pki = os.path.join(directory, "mtlsd-pki")
        with pkiClient(port, pki) as sock:
            sock.sendall(b"as nobody")
            self.assertEqual(receiveExactly(sock, 9), b"as nobody")
        self.assertNotIn("reload failed", daemon.log())


def keySecrets(path: str) -> list[str]:
    """
    What would betray a private key: its PEM body lines, its DER in base64
    chunks, and its private number in decimal and hex.
    """
    with open(path, "rb") as f:
        pem = f.read()
    key = serialization.load_pem_private_key(pem, None)
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    value = key.private_numbers().private_value  # type: ignore[union-attr]
    encoded = base64.b64encode(der).decode()
    return [
        *(line for line in pem.decode().splitlines() if "-----" not in line),
        *(encoded[i : i + 24] for i in range(0, len(encoded) - 24, 24)),
        str(value),
        f"{value:x}",
    ]


class SecretsTests(DaemonTestMixin, SynchronousTestCase):
    def test_noKeyMaterialAnywhere(self) -> None:
        """
        Through start-up, connections, failed reloads (a broken certificate,
        a key that does not match), /metrics, /healthz, start-up errors (a
        key that does not match, an encrypted key without its passphrase)
        and C{mtlsd inspect} of every file, in text and JSON logs, nothing
        mtlsd prints holds a PEM key marker or any piece of a private key.
        """
        directory = self.workDirectory()
        pki = os.path.join(directory, "mtlsd-pki")
        outputs = []
        daemon = self.startDaemon(directory, "--reload-interval", "0.2", "--log-format", "json",
                                  "--metrics", "tcp:0:interface=127.0.0.1")  # fmt: skip
        metricsPort = daemon.waitForListening(pattern=r"Site starting on (\d+)")
        daemon.waitForListening()
        mtlsd("connect", f"localhost:{daemon.port}", cwd=directory, input=b"hello\n")
        secrets = keySecrets(os.path.join(pki, "server.key")) + keySecrets(
            os.path.join(pki, "client.key")
        )
        with open(os.path.join(pki, "server.crt"), "rb") as f:
            certificate = f.read()
        with open(os.path.join(pki, "server.crt"), "ab") as f:
            f.write(b"-----BEGIN CERTIFICATE-----\nbroken\n")
        daemon.waitForLog("reload failed")
        with open(os.path.join(pki, "server.crt"), "wb") as f:
            f.write(certificate)
        with open(os.path.join(pki, "client.key"), "rb") as f:
            otherKey = f.read()
        with open(os.path.join(pki, "server.key"), "rb") as f:
            serverKey = f.read()
        with open(os.path.join(pki, "server.key"), "wb") as f:
            f.write(otherKey)  # a key that does not match the certificate
        daemon.waitForLog("does not match", count=1)
        outputs.append(get(metricsPort, "/metrics")[1])
        outputs.append(get(metricsPort, "/healthz")[1])
        daemon.stop()
        outputs.append(daemon.log())

        for args in (
            ["--cert", "mtlsd-pki/server.crt", "--key", "mtlsd-pki/server.key",
             "--client-certs", "mtlsd-pki/ca.crt"],
            ["--cert", "mtlsd-pki/server.crt", "--key", "encrypted.key",
             "--client-certs", "mtlsd-pki/ca.crt"],
        ):  # fmt: skip
            key = serialization.load_pem_private_key(serverKey, None)
            with open(os.path.join(directory, "encrypted.key"), "wb") as f:
                f.write(key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                    serialization.BestAvailableEncryption(b"passphrase"),
                ))  # fmt: skip
            failed = Daemon(directory, ["--port", "0", *args])
            self.assertNotEqual(failed.process.wait(30), 0)
            failed.stop()
            outputs.append(failed.log())
        inspected = mtlsd("inspect", *(os.path.join(pki, n) for n in sorted(os.listdir(pki))),
                          "encrypted.key", cwd=directory)  # fmt: skip
        outputs.append((inspected.stdout + inspected.stderr).decode())

        everything = "\n".join(outputs)
        self.assertIn("does not match", everything)
        self.assertIn("passphrase", everything)
        self.assertNotIn("PRIVATE KEY", everything)
        for secret in secrets:
            self.assertNotIn(secret, everything)
