"""
The benchmark's client side (and its fallback backend), one mode per run:

    loadgen.py handshakes --port P --n N [--data]   full mTLS handshakes, N connections
    loadgen.py handshakes ... --resume              the same, resuming one earlier session
    loadgen.py bulk --port P --bytes B              one connection echoing B bytes
    loadgen.py latency --port P --count C           C round trips of 64 bytes
    loadgen.py hold --port P --n N                  open N connections, hold until stdin closes
    loadgen.py echo                                 asyncio echo server (if no C compiler)

Each client mode prints one JSON object on stdout.  run.py starts it pinned to
the client CPU.  Everything is on 127.0.0.1 and bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import selectors
import socket
import ssl
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HOST = "127.0.0.1"
SERVER_NAME = "localhost"


def clientContext(args: argparse.Namespace) -> ssl.SSLContext:
    """
    A TLS 1.3 client context that verifies the server and presents the client
    certificate.  A session is reused only where a mode passes one.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion[args.tls]
    return ctx


def connect(
    ctx: ssl.SSLContext, port: int, timeout: float, session: ssl.SSLSession | None = None
) -> ssl.SSLSocket:
    raw = socket.create_connection((HOST, port), timeout=timeout)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        return ctx.wrap_socket(raw, server_hostname=SERVER_NAME, session=session)
    except BaseException:
        raw.close()
        raise


def recvExactly(sock: ssl.SSLSocket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def closeCleanly(sock: ssl.SSLSocket) -> str:
    """
    Send close_notify and wait for the server to close (its close_notify, or
    a plain EOF).  Returns "clean" or "unclean"; a TLS alert raises.
    """
    try:
        sock.unwrap().close()
        return "clean"
    except ssl.SSLError as e:
        if "ALERT" in str(e).upper():
            raise
        return "unclean"
    except (ConnectionError, EOFError):
        return "unclean"
    finally:
        sock.close()


def oneConnection(
    ctx: ssl.SSLContext,
    port: int,
    data: bool,
    timeout: float,
    session: ssl.SSLSession | None = None,
) -> tuple[str, float, bool]:
    """
    One connection, offering C{session} if given.  Returns how it closed, how
    long it took from connect() to the handshake's end (or, with C{data}, to
    the echoed byte), and whether the session was resumed.
    """
    start = time.perf_counter()
    sock = connect(ctx, port, timeout, session)
    try:
        if data:
            sock.sendall(b"x")
            if recvExactly(sock, 1) != b"x":
                raise ValueError("echo mismatch")
        setup = time.perf_counter() - start
        reused = sock.session_reused
        return closeCleanly(sock), setup, reused
    finally:
        sock.close()


def ticket(ctx: ssl.SSLContext, port: int, timeout: float) -> ssl.SSLSession | None:
    """
    A session to resume, from one full connection that echoes a byte (a TLS
    1.3 ticket arrives after the handshake, with the first data).
    """
    sock = connect(ctx, port, timeout)
    try:
        sock.sendall(b"x")
        recvExactly(sock, 1)
        return sock.session
    finally:
        closeCleanly(sock)


def _handshakeWorker(job: tuple[argparse.Namespace, int]) -> dict[str, object]:
    args, n = job
    ctx = clientContext(args)
    counts = {"clean": 0, "unclean": 0}
    setups: list[float] = []
    errors: dict[str, int] = {}
    resumed = 0
    deadline = time.monotonic() + args.time_limit
    session = ticket(ctx, args.port, args.timeout) if args.resume else None
    for _ in range(n):
        if time.monotonic() > deadline:
            errors["time limit"] = errors.get("time limit", 0) + 1
            break
        try:
            how, setup, reused = oneConnection(ctx, args.port, args.data, args.timeout, session)
            counts[how] += 1
            setups.append(setup)
            resumed += reused
        except Exception as e:  # counted and reported, not fatal
            key = f"{type(e).__name__}: {e}"[:120]
            errors[key] = errors.get(key, 0) + 1
    return {"counts": counts, "errors": errors, "setups": setups, "resumed": resumed}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def cmdHandshakes(args: argparse.Namespace) -> dict[str, object]:
    procs = max(1, min(args.procs, args.n))
    shares = [args.n // procs + (1 if i < args.n % procs else 0) for i in range(procs)]
    start = time.monotonic()
    if procs == 1:
        results = [_handshakeWorker((args, args.n))]
    else:
        with multiprocessing.get_context("fork").Pool(procs) as pool:
            results = pool.map(_handshakeWorker, [(args, s) for s in shares])
    wall = time.monotonic() - start
    errors: dict[str, int] = {}
    clean = unclean = 0
    setups: list[float] = []
    for r in results:
        setups.extend(r["setups"])
        clean += r["counts"]["clean"]
        unclean += r["counts"]["unclean"]
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {
        "ok": clean + unclean,
        "clean": clean,
        "unclean": unclean,
        "errors": errors,
        "resumed": sum(int(r["resumed"]) for r in results),  # type: ignore[call-overload]
        "primed": procs if args.resume else 0,
        "wall": wall,
        "setup_p50_ms": percentile(setups, 50) * 1e3 if setups else None,
    }


def cmdBulk(args: argparse.Namespace) -> dict[str, object]:
    """
    Send args.bytes through one connection while reading the echo back, with
    at most args.window bytes in flight, from one thread (non-blocking).
    """
    ctx = clientContext(args)
    sock = connect(ctx, args.port, args.timeout)
    chunk = 256 * 1024
    out = memoryview(bytes(range(256)) * (chunk // 256))
    buf = bytearray(chunk)
    view = memoryview(buf)
    total, sent, received = args.bytes, 0, 0
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    start = time.monotonic()
    deadline = start + args.time_limit
    pendingWrite = 0  # size of a write that must be retried with the same length
    try:
        while received < total:
            progress = False
            if sent < total and (pendingWrite or sent - received < args.window):
                size = pendingWrite or min(chunk, total - sent)
                try:
                    sent += sock.send(out[:size])
                    pendingWrite = 0
                    progress = True
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    pendingWrite = size
            for _ in range(64):
                try:
                    n = sock.recv_into(view)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    break
                if n == 0:
                    raise EOFError(f"closed after {received} of {total} bytes")
                received += n
                progress = True
            if not progress:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"time limit after {received} of {total} bytes")
                wantWrite = sent < total and (pendingWrite or sent - received < args.window)
                sel.modify(
                    sock,
                    selectors.EVENT_READ | (selectors.EVENT_WRITE if wantWrite else 0),
                )
                sel.select(1.0)
        wall = time.monotonic() - start
    finally:
        sel.close()
        sock.setblocking(True)
        sock.settimeout(args.timeout)
        try:
            closeCleanly(sock)
        except Exception:
            pass
    return {"bytes": received, "wall": wall}


def cmdLatency(args: argparse.Namespace) -> dict[str, object]:
    ctx = clientContext(args)
    sock = connect(ctx, args.port, args.timeout)
    message = b"m" * args.size
    samples: list[float] = []
    deadline = time.monotonic() + args.time_limit
    try:
        for i in range(args.warmup + args.count):
            t0 = time.perf_counter()
            sock.sendall(message)
            if recvExactly(sock, args.size) != message:
                raise ValueError("echo mismatch")
            if i >= args.warmup:
                samples.append(time.perf_counter() - t0)
            if time.monotonic() > deadline:
                break
    finally:
        try:
            closeCleanly(sock)
        except Exception:
            pass
    return {
        "count": len(samples),
        "p50_us": percentile(samples, 50) * 1e6,
        "p99_us": percentile(samples, 99) * 1e6,
    }


def cmdHold(args: argparse.Namespace) -> None:
    """
    Open args.n connections, args.threads at a time, each one proven with a
    1-byte echo; print a JSON line; hold them until stdin closes (or the time
    limit); close them.
    """
    ctx = clientContext(args)
    deadline = time.monotonic() + args.time_limit

    def open1(_: int) -> ssl.SSLSocket | str:
        if time.monotonic() > deadline:
            return "time limit"
        try:
            sock = connect(ctx, args.port, args.timeout)
        except Exception as e:
            return f"{type(e).__name__}: {e}"[:120]
        try:
            sock.sendall(b"x")
            recvExactly(sock, 1)
        except Exception as e:
            sock.close()
            return f"{type(e).__name__}: {e}"[:120]
        return sock

    held: list[ssl.SSLSocket] = []
    errors: dict[str, int] = {}
    try:
        with ThreadPoolExecutor(args.threads) as pool:
            for result in pool.map(open1, range(args.n)):
                if isinstance(result, str):
                    errors[result] = errors.get(result, 0) + 1
                else:
                    held.append(result)
        print(json.dumps({"held": len(held), "errors": errors}), flush=True)
        sel = selectors.DefaultSelector()
        sel.register(sys.stdin, selectors.EVENT_READ)
        sel.select(max(0.0, deadline - time.monotonic()))
        sel.close()
    finally:
        for sock in held:
            sock.close()


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]

    def pause_writing(self) -> None:
        self.transport.pause_reading()  # type: ignore[attr-defined]

    def resume_writing(self) -> None:
        self.transport.resume_reading()  # type: ignore[attr-defined]


def cmdEcho(args: argparse.Namespace) -> None:
    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(
            _Echo, HOST, args.port, backlog=4096
        )
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.sleep(args.time_limit)

    asyncio.run(serve())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("mode", choices=["handshakes", "bulk", "latency", "hold", "echo"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ca")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--tls", default="TLSv1_3", choices=["TLSv1_2", "TLSv1_3"])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--procs", type=int, default=2, help="handshakes: processes")
    parser.add_argument("--threads", type=int, default=8, help="hold: connecting threads")
    parser.add_argument("--data", action="store_true", help="handshakes: 1-byte echo each")
    parser.add_argument(
        "--resume", action="store_true", help="handshakes: resume a session got first"
    )
    parser.add_argument("--bytes", type=int, default=256 << 20)
    parser.add_argument("--window", type=int, default=4 << 20)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=15.0, help="per socket operation")
    parser.add_argument("--time-limit", type=float, default=300.0, help="whole run")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, args.n + 256)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
        except (ValueError, OSError):
            pass

    commands = {
        "handshakes": cmdHandshakes,
        "bulk": cmdBulk,
        "latency": cmdLatency,
        "hold": cmdHold,
        "echo": cmdEcho,
    }
    result = commands[args.mode](args)
    if result is not None:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
