"""
Helpers for the black-box tests: running C{twistd mtlsd}, the C{mtlsd}
command and C{openssl} as real processes, and talking to the daemon over
real sockets.  Everything blocks, with a bounded deadline.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence

BIN = os.path.dirname(sys.executable)
TWISTD = os.path.join(BIN, "twistd")
TWIST = os.path.join(BIN, "twist")
MTLSD = os.path.join(BIN, "mtlsd")
OPENSSL = shutil.which("openssl")

# How long a process or a readiness check may take before a test fails.
DEADLINE = 15.0
POLL = 0.05


_REJECTED = re.compile(r"\[mtlsd#info\] rejected (\S+): (.*)$", re.MULTILINE)
_ACCEPTED = re.compile(
    r"\[mtlsd#info\] accepted (\S+): CN=(.*?) sha256=([0-9a-f]{64}) serial=([0-9a-f]+)$",
    re.MULTILINE,
)


def environment() -> dict[str, str]:
    """
    @return: the environment for child processes: this one, with the
        virtualenv's scripts first on C{PATH}.
    """
    env = dict(os.environ)
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    return env


def run(
    args: Sequence[str],
    cwd: str,
    input: bytes = b"",
    timeout: float = DEADLINE,
    stdinPath: str | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """
    Run a command to completion, capturing its output.

    @param input: bytes for its standard input (through a pipe).
    @param stdinPath: a file to use as its standard input instead.
    """
    if stdinPath is not None:
        with open(stdinPath, "rb") as stdin:
            return subprocess.run(
                list(args),
                cwd=cwd,
                stdin=stdin,
                capture_output=True,
                timeout=timeout,
                env=environment(),
            )
    return subprocess.run(
        list(args),
        cwd=cwd,
        input=input,
        capture_output=True,
        timeout=timeout,
        env=environment(),
    )


def mtlsd(
    *args: str, cwd: str, input: bytes = b"", stdinPath: str | None = None
) -> subprocess.CompletedProcess[bytes]:
    """
    Run the C{mtlsd} command.
    """
    return run([MTLSD, *args], cwd, input, stdinPath=stdinPath)


def openssl(*args: str, cwd: str, input: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """
    Run the C{openssl} command; fail if it fails.
    """
    assert OPENSSL is not None
    result = run([OPENSSL, *args], cwd, input)
    if result.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed: {result.stderr.decode()}")
    return result


def recipeCertificate(
    cwd: str,
    name: str,
    commonName: str,
    *,
    ec: bool = False,
    subjectAltName: str | None = None,
) -> tuple[str, str]:
    """
    Make C{name.crt} and C{name.key} as the classic mutual-TLS recipe does:
    a self-signed certificate from one C{openssl req} command.

    @return: the certificate's and the key's paths.
    """
    newKey = (
        ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if ec else ["-newkey", "rsa:2048"]
    )
    extra = ["-addext", f"subjectAltName={subjectAltName}"] if subjectAltName else []
    openssl(
        "req",
        "-new",
        *newKey,
        "-days",
        "365",
        "-nodes",
        "-x509",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.crt",
        "-subj",
        f"/CN={commonName}",
        *extra,
        cwd=cwd,
    )
    return os.path.join(cwd, f"{name}.crt"), os.path.join(cwd, f"{name}.key")


def readUntil(fd: int, pattern: bytes, deadline: float = DEADLINE) -> bytes:
    """
    Read from C{fd} until what was read contains C{pattern}.

    @return: everything read.
    @raise AssertionError: at end of file or after C{deadline} seconds.
    """
    data = b""
    end = time.monotonic() + deadline
    while pattern not in data:
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{pattern!r} not read within {deadline}s; got {data!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"end of file before {pattern!r}; got {data!r}")
            data += chunk
    return data


def receiveExactly(sock: socket.socket, size: int, deadline: float = DEADLINE) -> bytes:
    """
    Read C{size} bytes from C{sock}.
    """
    sock.settimeout(deadline)
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise AssertionError(f"connection closed after {data!r}")
        data += chunk
    return data


def waitUntilClosed(sock: socket.socket, deadline: float) -> None:
    """
    Read and discard until the peer closes C{sock} (end of file or reset).

    @raise AssertionError: if it is still open after C{deadline} seconds.
    """
    end = time.monotonic() + deadline
    while True:
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError(f"the server did not close the connection within {deadline}s")
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return
        except ConnectionResetError:
            return
        except TimeoutError:
            continue


def tlsClient(port: int, certificate: str, key: str, caFile: str, serverName: str) -> ssl.SSLSocket:
    """
    Connect to 127.0.0.1:C{port} the way the classic recipe's Python client
    does: the standard library's default context, trusting C{caFile},
    presenting C{certificate}.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=caFile)
    # Python 3.13 turned on VERIFY_X509_STRICT by default, which refuses the
    # recipe's openssl-req certificates (no keyUsage); clearing it changes
    # nothing on older versions.
    context.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
    context.load_cert_chain(certificate, key)
    raw = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
    return context.wrap_socket(raw, server_hostname=serverName)


class Daemon:
    """
    One C{twistd -n mtlsd} (or C{twist mtlsd}) process, its output in a
    log file.
    """

    def __init__(self, directory: str, args: Sequence[str], twist: bool = False):
        self.directory = directory
        self.port = 0
        self.logPath = os.path.join(directory, "daemon.log")
        if twist:
            command = [TWIST, "mtlsd", *args]
        else:
            command = [TWISTD, "-n", "--pidfile=", "--logfile=-", "mtlsd", *args]
        self._logFile = open(self.logPath, "wb")
        self.process = subprocess.Popen(
            command,
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=self._logFile,
            stderr=subprocess.STDOUT,
            env=environment(),
        )

    def stop(self) -> None:
        """
        Terminate the process and wait for it.
        """
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(DEADLINE)
        self._logFile.close()

    def log(self) -> str:
        """
        @return: what the daemon has logged so far.
        """
        with open(self.logPath, encoding="utf-8", errors="replace") as f:
            return f.read()

    def waitForListening(self, deadline: float = DEADLINE) -> int:
        """
        Wait until the daemon logs the port it listens on (it is started on
        port 0, so no other process can hold it), and remember it.

        @raise AssertionError: if it exits or is not listening in time.
        @return: the port.
        """
        end = time.monotonic() + deadline
        while True:
            found = re.search(r"\(TLS\) starting on (\d+)", self.log())
            if found:
                self.port = int(found.group(1))
                return self.port
            if self.process.poll() is not None:
                raise AssertionError(
                    f"the daemon exited with {self.process.returncode}:\n{self.log()}"
                )
            if time.monotonic() > end:
                raise AssertionError(f"the daemon did not listen within {deadline}s:\n{self.log()}")
            time.sleep(POLL)

    def waitForLog(self, pattern: str, count: int = 1, deadline: float = DEADLINE) -> list[str]:
        """
        Wait until at least C{count} log lines match the regular expression
        C{pattern}.

        @return: the matching lines.
        """
        end = time.monotonic() + deadline
        while True:
            lines = [line for line in self.log().splitlines() if re.search(pattern, line)]
            if len(lines) >= count:
                return lines
            if time.monotonic() > end:
                raise AssertionError(
                    f"{count} log line(s) matching {pattern!r} not seen in {deadline}s:\n"
                    + self.log()
                )
            time.sleep(POLL)

    def rejections(self) -> list[str]:
        """
        @return: the reasons of the daemon's C{rejected} lines, except the
            readiness probe's.
        """
        return [reason for _, reason in _REJECTED.findall(self.log())]

    def waitForRejections(self, count: int, deadline: float = DEADLINE) -> list[str]:
        """
        Wait until the daemon has logged C{count} rejections (not counting
        the readiness probe).

        @return: their reasons, in order.
        """
        end = time.monotonic() + deadline
        while len(self.rejections()) < count:
            if time.monotonic() > end:
                raise AssertionError(f"{count} rejections not logged in {deadline}s:\n{self.log()}")
            time.sleep(POLL)
        return self.rejections()

    def accepted(self) -> list[tuple[str, str, str, str]]:
        """
        @return: (client, CN, sha256, serial) of every C{accepted} line.
        """
        return _ACCEPTED.findall(self.log())
