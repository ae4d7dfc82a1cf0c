"""
End-to-end test of the local DNS server (issue 11) with real processes on
loopback: two C{beam} nodes, the host exposing a twisted.web server under
the name C{alice}, the client answering C{alice.beam} on its DNS port.

C{dig} (Debian package C{dnsutils}, installed by
L{beam.testing.sysdeps.ensureCommands} when missing) asks the server as
a user would; the HTTP client resolves C{alice.beam} through the same
server with a few lines of L{twisted.names.dns} over a UDP socket (no new
dependency), then fetches C{http://alice.beam:PORT/} with C{http.client}.

Nothing sleeps a fixed time; every process is killed when the test ends.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase

from beam.test.test_e2e_names import controlGet, freePort
from beam.test import test_e2e_tunnel
from beam.test.test_e2e_tunnel import BIN, LOOPBACK, Child, E2EMixin, waitUntil
from beam.testing.sysdeps import ensureCommands


def udpFreePort() -> int:
    """
    A port free for both UDP and TCP on 127.0.0.1 (as far as one can
    tell before using it).
    """
    while True:
        port = freePort()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def dotted(rr: dns.RRHeader) -> str:
    """
    The address of an A record.
    """
    return cast(Any, rr.payload).dottedQuad()


def askDNS(port: int, name: bytes, qtype: int = dns.A, timeout: float = 15) -> dns.Message:
    """
    One query to the server on C{127.0.0.1:port} over UDP; the decoded
    answer.
    """
    query = dns.Message(id=4321, recDes=1)
    query.queries = [dns.Query(name, qtype, dns.IN)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(query.toStr(), ("127.0.0.1", port))
        data, _ = s.recvfrom(4096)
    answer = dns.Message()
    answer.fromStr(data)
    return answer


class BeamDNSConnection(http.client.HTTPConnection):
    """
    An HTTP connection whose host name is resolved through a Beam DNS
    server (the A record), like a system resolver set up per docs/dns.md.
    """

    dnsPort = 0

    def connect(self) -> None:
        answer = askDNS(self.dnsPort, self.host.encode("ascii"))
        addresses = [dotted(rr) for rr in answer.answers if rr.type == dns.A]
        if not addresses:
            raise OSError(f"{self.host}: no address (rcode {answer.rCode})")
        self.resolved = addresses[0]
        self.sock = socket.create_connection((addresses[0], self.port), self.timeout)


def dig(port: int, *args: str) -> str:
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "+tries=1", "+time=10", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )
    return out.stdout + out.stderr


class DNSEndToEndTests(E2EMixin, SynchronousTestCase):
    """
    C{dig} and an HTTP client against a real node's DNS server.
    """

    # The twisted.web server of the tunnel tests (not imported by name:
    # pytest would collect its tests here too).
    def webServer(self) -> tuple[int, bytes, bytes]:
        return test_e2e_tunnel.HTTPTests.webServer(self)  # type: ignore[arg-type]

    def test_digAndHTTPThroughDNS(self) -> None:
        """
        The client node (its DNS server on a free port) joins the host
        node, which exposes a web server and registers C{alice}: C{dig
        alice.beam} answers an address of C{[dns] addresses} with a 5 s
        TTL; C{dig SERVICE.alice.beam} another one; AAAA is NOERROR with
        no answer; an unknown name NXDOMAIN; another zone REFUSED; an HTTP
        client resolving through the server fetches
        C{http://alice.beam:PORT/} through the tunnel (5 MiB, SHA-256
        intact); garbage and oversized datagrams get FORMERR or nothing
        and the server goes on answering; C{POST /v1/dns/address} gives
        the same address with its port; C{GET /v1/dns} shows the
        allocation; state.json remembers it; no tracebacks.
        """
        ensureCommands({"dig": "dnsutils"})
        dnsPort = udpFreePort()
        clientHome = self.newHome()
        (Path(clientHome) / "config.toml").write_text(
            f'mdns = false\n[dns]\nport = {dnsPort}\naddresses = "127.77.0.0/16"\n'
        )
        client = Child(
            self, [str(BIN / "beam"), "--home", clientHome, "daemon", "--json", "--listen", LOOPBACK], "client",
        )
        ready = client.readJSON(timeout=60)
        self.assertEqual(ready["event"], "ready")
        clientAddr = ready["addrs"][0]

        webPort, big, small = self.webServer()
        hostHome = self.newHome()
        (Path(hostHome) / "config.toml").write_text("mdns = false\ndns = false\n")
        (Path(hostHome) / "state.json").write_text(json.dumps({"name": "alice"}))
        host = Child(
            self,
            [str(BIN / "beam"), "--home", hostHome, "--bootstrap", clientAddr, str(webPort), "--json",
             "--listen", LOOPBACK],
            "host",
        )
        exposed = host.readJSON(timeout=60)
        self.assertEqual(exposed["event"], "ready")
        self.assertEqual(exposed["registered"]["name"], "alice", exposed)
        t0 = time.monotonic()

        # dig, as a user would.
        out = waitUntil(lambda: (lambda o: o if "status: NOERROR" in o and "ANSWER: 1" in o else None)(
            dig(dnsPort, "alice.beam", "A")), 30, f"dig alice.beam answers:\n{client.tail()}")
        print(f"\nfirst dig answer {time.monotonic() - t0:.2f} s after the host was ready")
        line = [ln for ln in out.splitlines() if ln.startswith("alice.beam.") and "\tA\t" in ln][0]
        fields = line.split()
        self.assertEqual(fields[1], "5", line)
        address = fields[-1]
        self.assertTrue(address.startswith("127.77."), line)
        short = dig(dnsPort, "+short", f"{webPort}.alice.beam").split()
        self.assertEqual(len(short), 1, short)
        self.assertNotEqual(short[0], address)
        self.assertTrue(short[0].startswith("127.77."), short)
        aaaa = dig(dnsPort, "alice.beam", "AAAA")
        self.assertIn("status: NOERROR", aaaa)
        self.assertIn("ANSWER: 0", aaaa)
        self.assertIn("status: NXDOMAIN", dig(dnsPort, "nobody-here.beam"))
        self.assertIn("status: NXDOMAIN", dig(dnsPort, "nosuchservice.alice.beam"))
        self.assertIn("status: REFUSED", dig(dnsPort, "example.com"))
        self.assertIn("status: NOERROR", dig(dnsPort, "+tcp", "alice.beam"))

        # An HTTP client resolving through the server, through the tunnel.
        BeamDNSConnection.dnsPort = dnsPort
        for path, content in [("/big.bin", big), ("/hello.txt", small)]:
            conn = BeamDNSConnection("alice.beam", webPort, timeout=60)
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                body = resp.read()
            finally:
                conn.close()
            self.assertEqual(resp.status, 200)
            self.assertEqual(conn.resolved, address)
            self.assertEqual(hashlib.sha256(body).hexdigest(), hashlib.sha256(content).hexdigest())
        # Without a service port the address answers nothing else.
        with self.assertRaises(OSError):
            socket.create_connection((address, webPort + 1 if webPort < 65535 else webPort - 1), 5).close()

        # Malformed and oversized datagrams: FORMERR or nothing.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            # Silence is a drop: a short wait (a late FORMERR would still
            # be a FORMERR when read for the next datagram).
            s.settimeout(0.5)
            for junk in [b"", b"\x00", b"\x12\x34\x01\x00\x00\x01" + b"\xff" * 40, b"\x12\x34" + b"\x00" * 2000,
                         b"\x12\x34\x80" + b"\x00" * 30]:
                s.sendto(junk, ("127.0.0.1", dnsPort))
                try:
                    data, _ = s.recvfrom(4096)
                except socket.timeout:
                    continue
                reply = dns.Message()
                reply.fromStr(data)
                self.assertEqual(reply.rCode, dns.EFORMAT, junk[:20])
        self.assertEqual(dotted(askDNS(dnsPort, b"alice.beam").answers[0]), address)

        # The control API.
        created = self.post(clientHome, "/v1/dns/address", {"name": "alice"})
        self.assertEqual(created, {"host": "alice.beam", "address": address, "ports": [webPort]})
        status = controlGet(clientHome, "/v1/dns")
        self.assertEqual(status["listening"], f"127.0.0.1:{dnsPort}")
        hosts = {a["host"]: a for a in status["allocations"]}
        self.assertEqual(hosts["alice.beam"]["address"], address)
        self.assertEqual(hosts["alice.beam"]["ports"], [webPort])
        self.assertEqual(hosts["alice.beam"]["peer_id"], exposed["peer_id"])
        state = json.loads((Path(clientHome) / "state.json").read_text())
        self.assertEqual(state["dns_addresses"]["alice"], address)

        self.assertTrue(client.alive())
        self.assertNoTracebacks(client, host)

    def post(self, home: str, path: str, body: dict[str, Any]) -> Any:
        """
        POST C{body} to the control socket of C{home}'s node.
        """

        class Conn(http.client.HTTPConnection):
            def connect(self) -> None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(30)
                self.sock.connect(str(Path(home) / "control.sock"))

        conn = Conn("beam", timeout=30)
        try:
            conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            self.assertEqual(resp.status, 200, data)
            return json.loads(data)
        finally:
            conn.close()


if __name__ == "__main__":
    sys.exit("run with pytest")
