"""
Real C{beam} processes inside the NAT lab (L{beam.testing.netlab}), for the
end-to-end NAT traversal tests (issue 9): every C{beam} command runs in a
lab host's network namespace with its own C{--home}, exactly as a user
behind that NAT would run it.

Also, run as a program inside a lab host, the two ends of the traffic that
goes through the tunnels:

  - C{python -m beam.testing.labbeam serve --size N --seed S}: an HTTP
    server on 127.0.0.1 with an index page at C{/} and C{N} bytes of a
    deterministic pattern at C{/big.bin}; prints C{{"port": P}} once
    listening;
  - C{python -m beam.testing.labbeam fetch --port P --size N --deadline D}:
    polls C{http://127.0.0.1:P/} every 50 ms until the index page comes
    (printing C{{"event": "usable", "at": MONOTONIC}}; started before
    C{beam connect}, it times when the tunnel first carried a request),
    then downloads C{/big.bin} and prints C{{"event": "fetched", "bytes",
    "sha256", "seconds"}}.

Nothing here sleeps a fixed time in place of a condition: every wait polls
with a deadline, and every process is killed by its PID at cleanup.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

from beam.testing.lines import LineReader
from beam.testing.netlab import Host, NatLab

__all__ = ["INDEX", "MiB", "BeamProcess", "LabBeam", "addPublicAddress", "patternChunks", "patternDigest"]

MiB = 1 << 20

#: The index page the lab's web server serves at C{/}.
INDEX = b"<html><body>hello through the NAT lab</body></html>\n"

#: The C{beam} executable next to this Python (the project's venv).
BEAM = str(Path(sys.executable).parent / "beam")


# -- the traffic --------------------------------------------------------------


def patternChunks(size: int, seed: int, chunk: int = MiB) -> Iterator[bytes]:
    """
    C{size} bytes of a pattern both ends can make without shipping it: one
    pseudo-random block drawn from C{seed}, repeated with a counter in its
    first 8 bytes so no two chunks are alike (a misordered or repeated
    chunk changes the digest).
    """
    block = random.Random(seed).randbytes(chunk)
    for i, offset in enumerate(range(0, size, chunk)):
        piece = i.to_bytes(8, "big") + block[8:]
        yield piece[: size - offset]


def patternDigest(size: int, seed: int) -> str:
    """
    The SHA-256 (hex) of L{patternChunks}C{(size, seed)}.
    """
    h = hashlib.sha256()
    for piece in patternChunks(size, seed):
        h.update(piece)
    return h.hexdigest()


def _serve(size: int, seed: int) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.path == "/":
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(INDEX)))
                self.end_headers()
                self.wfile.write(INDEX)
            elif self.path == "/big.bin":
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                for piece in patternChunks(size, seed):
                    self.wfile.write(piece)
            else:
                self.send_error(404)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    server.serve_forever()


def _fetch(port: int, size: int, deadline: float) -> int:
    end = time.monotonic() + deadline
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/")
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            if resp.status == 200 and body == INDEX:
                break
        except (OSError, http.client.HTTPException):
            pass
        if time.monotonic() > end:
            print(json.dumps({"event": "unusable", "deadline": deadline}), flush=True)
            return 1
        time.sleep(0.05)
    print(json.dumps({"event": "usable", "at": time.monotonic()}), flush=True)
    started = time.monotonic()
    h = hashlib.sha256()
    count = 0
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/big.bin")
        resp = conn.getresponse()
        while True:
            piece = resp.read(MiB)
            if not piece:
                break
            h.update(piece)
            count += len(piece)
        conn.close()
        error = None if count == size else f"short body: {count} of {size} bytes"
    except (OSError, http.client.HTTPException) as e:
        error = f"{type(e).__name__}: {e}"
    print(json.dumps({"event": "fetched", "bytes": count, "sha256": h.hexdigest(),
                      "seconds": time.monotonic() - started, "error": error}), flush=True)
    return 0


# -- processes ---------------------------------------------------------------


class BeamProcess:
    """
    A long-running process in a lab host: JSON lines on stdout, stderr in a
    log file the tests search and quote.  Killed (by PID) by L{kill}, by
    L{LabBeam.close}, and by the lab's own L{NatLab.close}.
    """

    def __init__(self, host: Host, argv: Sequence[str], label: str, logDir: str) -> None:
        self.host = host
        self.label = label
        self.argv = list(argv)
        fd, path = tempfile.mkstemp(prefix=f"{label}-", suffix=".log", dir=logDir)
        self.logPath = Path(path)
        self._logFile = os.fdopen(fd, "wb")
        self.started = time.monotonic()
        self.proc = host.run(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._logFile)
        self.pid = self.proc.pid
        self._lines = LineReader(self.proc, self.label, self.tail)
        self.lines: list[str] = []

    def readLine(self, timeout: float = 30) -> str:
        """
        The next line on stdout; fails with the log rather than hang, and
        when the process exits first.
        """
        text = self._lines.readLine(timeout).decode(errors="replace")
        self.lines.append(text)
        return text

    def readJSON(self, timeout: float = 30) -> dict[str, Any]:
        """
        The next stdout line, as JSON.
        """
        line = self.readLine(timeout)
        try:
            value = json.loads(line)
        except ValueError:
            raise AssertionError(f"{self.label}: not JSON: {line!r}; log:\n{self.tail()}") from None
        assert isinstance(value, dict), line
        return value

    def log(self) -> str:
        self._logFile.flush()
        return self.logPath.read_text(errors="replace")

    def tail(self, n: int = 4000) -> str:
        return self.log()[-n:]

    def grep(self, text: str) -> list[str]:
        """
        The log lines that contain C{text}.
        """
        return [line for line in self.log().splitlines() if text in line]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """
        SIGKILL (by PID) and reap; harmless when already gone.
        """
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._logFile.close()


class LabBeam:
    """
    Homes, C{beam} processes and the web service and fetcher, for one
    L{NatLab}.

    @ivar tmp: the directory holding every home and log (removed by
        L{close} unless C{keep} was given).
    """

    def __init__(self, lab: NatLab, keep: bool = False) -> None:
        self.lab = lab
        self.tmp = tempfile.mkdtemp(prefix="beam-natlab-")
        self.keep = keep
        self.processes: list[BeamProcess] = []
        self._homes = 0

    def newHome(self, label: str) -> str:
        """
        A new, empty home directory (a new identity).
        """
        self._homes += 1
        path = Path(self.tmp) / f"{self._homes:02d}-{label}"
        path.mkdir()
        return str(path)

    def start(self, host: Host, argv: Sequence[str], label: str) -> BeamProcess:
        """
        Start any long-running C{argv} in C{host}.
        """
        p = BeamProcess(host, argv, label, self.tmp)
        self.processes.append(p)
        return p

    def beam(self, host: Host, home: str, *args: str, label: Optional[str] = None) -> BeamProcess:
        """
        Start C{beam --home HOME ARGS...} in C{host} (a foreground
        command: C{beam PORT}, C{beam connect}, C{beam relay}, ...).
        """
        # -v: the tests search Beam's info lines in the log (refusals,
        # reservations), which the terminal gets only with it.
        return self.start(host, [BEAM, "-v", "--home", home, *args], label or f"{host.name}-{args[0]}")

    def run(self, host: Host, home: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """
        Run a short C{beam --home HOME ARGS...} in C{host} to completion.
        """
        return subprocess.run(host.argv([BEAM, "--home", home, *args]), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def json(self, host: Host, home: str, *args: str, timeout: float = 60) -> Any:
        """
        C{beam --home HOME ARGS... --json} in C{host}; its answer.  A
        failure raises with the command's stderr.
        """
        out = self.run(host, home, *args, "--json", timeout=timeout)
        if out.returncode != 0:
            raise AssertionError(f"beam {' '.join(args)} in {host.name} failed ({out.returncode}): {out.stderr}")
        return json.loads(out.stdout)

    def relay(self, host: Host, port: int = 4001, *extra: str) -> tuple[BeamProcess, str]:
        """
        C{beam relay} on a public host; the process and its address with
        C{/p2p/} (what others take as C{--bootstrap}).
        """
        home = self.newHome(f"{host.name}-relay")
        p = self.beam(host, home, "relay", "--json", "--listen", f"/ip4/0.0.0.0/tcp/{port}", *extra,
                      label=f"{host.name}-relay")
        ready = p.readJSON(timeout=60)
        if ready.get("event") != "ready":
            raise AssertionError(f"beam relay: {ready}")
        p.home = home  # type: ignore[attr-defined]
        return p, f"/ip4/{host.addr}/tcp/{port}/p2p/{ready['peer_id']}"

    def webServer(self, host: Host, size: int, seed: int) -> int:
        """
        The lab web server in C{host}, on 127.0.0.1; its port.
        """
        p = self.start(host, [sys.executable, "-m", "beam.testing.labbeam", "serve", "--size", str(size),
                              "--seed", str(seed)], f"{host.name}-web")
        port = p.readJSON(timeout=30)["port"]
        assert isinstance(port, int)
        return port

    def fetcher(self, host: Host, port: int, size: int, deadline: float) -> BeamProcess:
        """
        Start the fetcher in C{host} against 127.0.0.1:C{port} (start it
        before C{beam connect}: it polls until the tunnel answers).
        """
        return self.start(host, [sys.executable, "-m", "beam.testing.labbeam", "fetch", "--port", str(port),
                                 "--size", str(size), "--deadline", str(deadline)], f"{host.name}-fetch")

    def close(self) -> None:
        """
        Kill every process started here (by PID), then remove the homes
        and logs (kept with C{keep}).
        """
        processes, self.processes = self.processes, []
        for p in processes:
            p.kill()
        if not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)


def addPublicAddress(host: Host) -> str:
    """
    Give the public C{host} a second address on the lab's internet (the
    next free one in 203.0.113.0/24), for servers that need two IPs, such
    as RFC 5780's alternate address for STUN behaviour discovery.
    """
    if host.nat != "none":
        raise AssertionError(f"{host.name} is not a public host")
    addr = host.lab._internetAddr()
    subprocess.run(["ip", "-n", host.ns, "addr", "add", f"{addr}/24", "dev", "eth0"], check=True,
                   capture_output=True, timeout=20)
    return addr


def waitFor(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.2) -> Any:
    """
    Poll C{predicate} until it returns something true; fail after
    C{timeout} seconds, saying C{what} did not happen.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(step)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beam.testing.labbeam")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("--size", type=int, default=64 * MiB)
    serve.add_argument("--seed", type=int, default=9)
    fetch = sub.add_parser("fetch")
    fetch.add_argument("--port", type=int, required=True)
    fetch.add_argument("--size", type=int, default=64 * MiB)
    fetch.add_argument("--deadline", type=float, default=60)
    args = parser.parse_args(argv)
    if args.command == "serve":
        _serve(args.size, args.seed)
        return 0
    return _fetch(args.port, args.size, args.deadline)


if __name__ == "__main__":
    sys.exit(main())
