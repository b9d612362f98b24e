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
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import IO

BIN = os.path.dirname(sys.executable)
TWISTD = os.path.join(BIN, "twistd")
TWIST = os.path.join(BIN, "twist")
MTLSD = os.path.join(BIN, "mtlsd")
OPENSSL = shutil.which("openssl")

# How long a process or a readiness check may take before a test fails.
DEADLINE = 15.0
POLL = 0.05


# The reason, without the failing certificate's depth and subject after it.
_REJECTED = re.compile(
    r"\[mtlsd#info\] rejected (\S+): (.*?)(?: \(depth \d+, [^()]*\))?$", re.MULTILINE
)
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
    with open(stdinPath, "rb") if stdinPath is not None else nullcontext() as stdin:
        return subprocess.run(
            list(args),
            cwd=cwd,
            stdin=stdin,
            input=None if stdin is not None else input,
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


def pkiClient(port: int, pki: str, name: str = "client") -> ssl.SSLSocket:
    """
    L{tlsClient} as client C{name} of the development PKI in directory
    C{pki}, whose CA verifies the server as C{localhost}.
    """
    return tlsClient(port, os.path.join(pki, f"{name}.crt"), os.path.join(pki, f"{name}.key"),
                     os.path.join(pki, "ca.crt"), "localhost")  # fmt: skip


class _Process:
    """
    A child process whose output goes to C{logPath}; subclasses start it
    and set C{process} and C{_logFile}.
    """

    process: subprocess.Popen[bytes]
    logPath: str
    _logFile: IO[bytes]

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
        @return: what the process has written so far.
        """
        with open(self.logPath, encoding="utf-8", errors="replace") as f:
            return f.read()


class Daemon(_Process):
    """
    One C{twistd -n mtlsd} (or C{twist mtlsd}) process, its output in a
    log file.
    """

    def __init__(
        self,
        directory: str,
        args: Sequence[str],
        twist: bool = False,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] | None = None,
    ):
        """
        @param env: variables to add to L{environment} for this process.
        @param command: another command to run instead (then C{args} and
            C{twist} are not used).
        """
        self.directory = directory
        self.port = 0
        self.logPath = os.path.join(directory, "daemon.log")
        if command is None:
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
            env={**environment(), **(env or {})},
        )

    def waitForListening(
        self, deadline: float = DEADLINE, pattern: str = r"\(TLS\) starting on (\d+)"
    ) -> int:
        """
        Wait until the daemon logs the port it listens on (it is started on
        port 0, so no other process can hold it), and remember it.

        @param pattern: the log line giving the port, as its first group
            (L{LISTENING_ANY} also finds a C{haproxy:} listener's).
        @raise AssertionError: if it exits or is not listening in time.
        @return: the port.
        """
        end = time.monotonic() + deadline
        while True:
            found = re.search(pattern, self.log())
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


# What a listener logs when it starts, the port as the first group: C{(TLS)
# starting on PORT} for TCP, C{(TLS) (PROXY) starting on PORT} for a
# C{haproxy:} endpoint.
LISTENING_ANY = r"\(TLS\)(?: \(PROXY\))? starting on (\d+)"

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def repositoryOnPythonPath() -> dict[str, str]:
    """
    @return: the variable to add to a child's environment so that it can
        import C{tests} wherever it runs: C{PYTHONPATH} with this repository
        first.
    """
    return {"PYTHONPATH": os.pathsep.join(filter(None, [REPOSITORY, os.environ.get("PYTHONPATH")]))}


class Background(_Process):
    """
    Any other long-running process (a backend, C{mtlsd tunnel}, C{twistd
    web}, C{haproxy}), its standard output and error in one log file.
    """

    def __init__(
        self,
        args: Sequence[str],
        cwd: str,
        logPath: str,
        env: Mapping[str, str] | None = None,
    ):
        """
        @param env: variables to add to L{environment} for this process.
        """
        self.args = list(args)
        self.logPath = logPath
        self._logFile = open(logPath, "wb")
        self.process = subprocess.Popen(
            self.args,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._logFile,
            stderr=subprocess.STDOUT,
            env={**environment(), **(env or {})},
        )

    def _checkRunning(self, what: str) -> None:
        if self.process.poll() is not None:
            raise AssertionError(
                f"{self.args[0]} exited with {self.process.returncode} before {what}:\n{self.log()}"
            )

    def waitForLog(self, pattern: str, deadline: float = DEADLINE) -> re.Match[str]:
        """
        Wait until the output matches the regular expression C{pattern}.

        @raise AssertionError: if the process exits or time runs out first.
        """
        end = time.monotonic() + deadline
        while True:
            found = re.search(pattern, self.log())
            if found:
                return found
            self._checkRunning(f"logging {pattern!r}")
            if time.monotonic() > end:
                raise AssertionError(f"{pattern!r} not logged in {deadline}s:\n{self.log()}")
            time.sleep(POLL)

    def waitForFile(self, path: str, deadline: float = DEADLINE) -> str:
        """
        Wait until C{path} exists (written atomically by the process).

        @return: its content.
        """
        end = time.monotonic() + deadline
        while not os.path.exists(path):
            self._checkRunning(f"writing {path}")
            if time.monotonic() > end:
                raise AssertionError(f"{path} not written in {deadline}s:\n{self.log()}")
            time.sleep(POLL)
        with open(path) as f:
            return f.read()

    def waitForTCPListener(self, port: int, deadline: float = DEADLINE) -> None:
        """
        Wait until something listens on 127.0.0.1:C{port}, without
        connecting (a probe would be relayed like a client): read from
        C{/proc/net/tcp}.
        """
        end = time.monotonic() + deadline
        while not isListening(port):
            self._checkRunning(f"listening on {port}")
            if time.monotonic() > end:
                raise AssertionError(f"nothing listens on {port} after {deadline}s:\n{self.log()}")
            time.sleep(POLL)


def isListening(port: int) -> bool:
    """
    @return: whether a TCP socket is listening on 127.0.0.1:C{port} (Linux:
        C{/proc/net/tcp}).
    """
    wanted = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] in wanted and fields[3] == "0A":  # TCP_LISTEN
                return True
    return False


def exchange(sock: socket.socket, payload: bytes, deadline: float = DEADLINE) -> bytes:
    """
    Send C{payload} on C{sock} while reading, then shut down the writing
    direction and read until end of file.

    @return: everything read.
    """
    failures: list[BaseException] = []

    def send() -> None:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except BaseException as e:  # reported by the reading side
            failures.append(e)

    sock.settimeout(deadline)
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    chunks = []
    try:
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        sender.join(deadline)
    if failures:
        raise AssertionError(f"sending failed: {failures[0]!r}")
    return b"".join(chunks)
