"""End-to-end tests of Upgrade: WebSocket offers tunnelled after the 101 (issue 3, point 7).

The upstream here is a small WebSocket-ish server in this file (WsUpstream):
it answers the opening handshake with 101 and a correct Sec-WebSocket-Accept,
then echoes every byte back prefixed per read, so the tests see bytes cross
the tunnel both ways. What it received is recorded for the assertions.
Modes steer it: "accept", "raw" (echoes without the prefix), "summary"
(silent until the client half-closes, then sends what it counted and
300,000 bytes more), "badaccept" (a
101 with a wrong Sec-WebSocket-Accept), "slow" (the 101 after 0.6 s), "decline" (426 with a body, the connection stays
HTTP), "push" (sends bytes right behind its 101, in the same write),
"close" (closes right after the 101).
"""

import base64
import signal
import hashlib
import socket
import threading
import time

from harness import SLOW, Env, _Reader, read_response, wait_until

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = base64.b64encode(hashlib.sha1(KEY.encode() + WS_GUID).digest()).decode()


class WsUpstream:
    def __init__(self, port, mode="accept"):
        self.mode = mode
        self.heads = []       # request heads received (bytes)
        self.received = []    # bytes received after the handshake, per connection
        self.closed = threading.Event()
        self.connections = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.stop_flag = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop_flag:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        conn.settimeout(10)
        data = b""
        try:
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, data = data.split(b"\r\n\r\n", 1)
                self.heads.append(head)
                lower = head.lower()
                if self.mode == "decline" or b"upgrade: websocket" not in lower:
                    body = b"no upgrade here"
                    conn.sendall(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(body), body))
                    continue
                accept = b"bm90IHRoZSByaWdodCBvbmU=" if self.mode == "badaccept" else ACCEPT.encode()
                if self.mode == "slow":
                    time.sleep(0.6)
                reply = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept +
                         b"\r\nX-Upstream: ws\r\n\r\n")
                if self.mode == "push":
                    reply += b"pushed-with-101"
                conn.sendall(reply)
                if self.mode == "close":
                    return
                self._echo(conn, data)
                return
        except OSError:
            return
        finally:
            conn.close()
            self.closed.set()

    def _echo(self, conn, pending):
        got = bytearray()
        self.received.append(got)
        if pending:
            got += pending
            conn.sendall(b"echo:" + pending)
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                if self.mode == "summary":  # answers the client's half-close
                    conn.sendall(b"summary:%d:" % len(got) + b"z" * 300000)
                return
            got += chunk
            if self.mode != "summary":
                conn.sendall(chunk if self.mode == "raw" else b"echo:" + chunk)

    def close(self):
        self.stop_flag = True
        self.sock.close()


def handshake(extra=b"", path=b"/chat", method=b"GET", more_headers=b""):
    return (method + b" " + path + b" HTTP/1.1\r\nHost: ws.example\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY.encode() +
            b"\r\nSec-WebSocket-Version: 13\r\n" + more_headers + b"\r\n" + extra)


def recv_until(sock, needle, timeout=5.0, start=b""):
    data = bytearray(start)
    deadline = time.monotonic() + timeout
    while needle not in data:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if time.monotonic() > deadline:
            break
    return bytes(data)


def read_101(sock):
    """Returns (head text lower-cased, bytes after the head)."""
    data = recv_until(sock, b"\r\n\r\n")
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


class WsEnv:
    def __init__(self, mode="accept", extra_config="", proxy_tls=None):
        self.env = Env(proxy=False, upstream=False, proxy_tls=proxy_tls)
        self.mode = mode
        self.extra_config = extra_config

    def __enter__(self):
        self.env.__enter__()
        self.up = WsUpstream(self.env.upstream_port, self.mode)
        self.env.start_proxy(self.extra_config)
        return self

    def __exit__(self, *exc):
        self.up.close()
        return self.env.__exit__(*exc)

    def connect(self):
        s = socket.create_connection(("127.0.0.1", self.env.proxy.port), timeout=5)
        ctx = self.env.proxy.ssl_context
        return ctx.wrap_socket(s, server_hostname="127.0.0.1") if ctx else s


def test_websocket_is_tunnelled_both_ways():
    with WsEnv() as w:
        s = w.connect()
        s.sendall(handshake())
        head, rest = read_101(s)
        assert head.startswith("http/1.1 101") or head.startswith("HTTP/1.1 101"), head
        low = head.lower()
        assert "upgrade: websocket" in low and "connection: upgrade" in low, head
        assert ("sec-websocket-accept: " + ACCEPT.lower()) in low, head
        assert "x-upstream: ws" in low
        # the upstream saw the offer with its hop-by-hop fields put back
        up_head = w.up.heads[0].lower()
        assert b"upgrade: websocket" in up_head and b"connection: upgrade" in up_head, up_head
        assert b"sec-websocket-key: " + KEY.lower().encode() in up_head
        assert b"x-forwarded-for: 127.0.0.1" in up_head
        s.sendall(b"hello")
        assert b"echo:hello" in recv_until(s, b"echo:hello", start=rest)
        s.sendall(b"again")
        assert b"echo:again" in recv_until(s, b"echo:again")
        s.close()
        assert w.up.closed.wait(5), "the upstream side did not close with the client"
        entry = w.env.proxy.wait_access_log(1)[-1]
        assert entry["status"] == 101, entry
        # the tunnel's own end: how long, and bytes each way (the access line is at the 101)
        line = wait_until(lambda: next((ln for ln in w.env.proxy.error_log().splitlines()
                                        if "tunnel 127.0.0.1: closed after" in ln), None),
                          5, what="the tunnel's closing line")
        assert "10 bytes from the client" in line, line


def test_websocket_over_a_tls_listener():
    from certs import certs
    c = certs()
    with WsEnv(mode="raw", proxy_tls={"cert": c.server, "key": c.server_key, "ca": c.ca}) as w:
        s = w.connect()
        s.sendall(handshake(extra=b"first"))
        head, rest = read_101(s)
        assert " 101 " in head, head
        assert b"x-forwarded-proto: https" in w.up.heads[0].lower()
        payload = bytes(range(256)) * 4096  # 1 MiB each way
        got = bytearray(rest)
        s.sendall(payload)
        s.settimeout(10)
        while len(got) < len(b"first") + len(payload):
            chunk = s.recv(1 << 16)
            assert chunk, f"closed after {len(got)} bytes"
            got.extend(chunk)
        assert bytes(got) == b"first" + payload
        s.close()
        assert w.up.closed.wait(5)


def test_bytes_right_behind_the_handshake_cross_both_ways():
    with WsEnv(mode="push") as w:
        s = w.connect()
        s.sendall(handshake(extra=b"early-frame"))  # in the same write as the offer
        head, rest = read_101(s)
        assert " 101 " in head, head
        data = recv_until(s, b"echo:early-frame", start=rest)
        assert b"pushed-with-101" in data, data
        assert b"echo:early-frame" in data, data
        s.close()


def test_large_transfer_both_ways_is_intact():
    n = 8 * 1024 * 1024
    payload = bytes(range(256)) * (n // 256)
    with WsEnv(mode="raw") as w:
        s = w.connect()
        s.sendall(handshake())
        head, rest = read_101(s)
        assert " 101 " in head
        got = bytearray(rest)

        def reader():
            s.settimeout(20)
            while len(got) < n:
                chunk = s.recv(1 << 20)
                if not chunk:
                    return
                got.extend(chunk)

        t = threading.Thread(target=reader)
        t.start()
        s.sendall(payload)
        t.join(30)
        assert len(got) == n, len(got)
        assert bytes(got) == payload
        assert bytes(w.up.received[0]) == payload
        s.close()


def test_a_half_close_crosses_the_tunnel():
    """The client sends, then shuts down its sending half: the upstream sees
    the EOF after the bytes, and its answer still reaches the client whole."""
    with WsEnv(mode="summary") as w:
        s = w.connect()
        s.sendall(handshake())
        head, rest = read_101(s)
        assert " 101 " in head, head
        s.sendall(b"x" * 100000)
        s.shutdown(socket.SHUT_WR)
        got = bytearray(rest)
        s.settimeout(10)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got.extend(chunk)
        assert got.startswith(b"summary:100000:"), bytes(got[:40])
        assert len(got) == len(b"summary:100000:") + 300000, len(got)
        s.close()
        assert w.up.closed.wait(5)


def test_upstream_close_closes_the_client():
    with WsEnv(mode="close") as w:
        s = w.connect()
        s.sendall(handshake())
        head, rest = read_101(s)
        assert " 101 " in head
        s.settimeout(5)
        assert s.recv(100) == b"", "the client connection should close with the upstream"
        s.close()


def test_declined_offer_stays_http():
    with WsEnv(mode="decline") as w:
        s = w.connect()
        s.sendall(handshake())
        rd = _Reader(s)
        resp = read_response(rd, "GET")
        assert resp.status == 426 and resp.body == b"no upgrade here", resp
        # the same connection goes on as HTTP/1.1
        s.sendall(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(rd, "GET").status == 426
        s.close()
        # the upstream connection that carried the offer was not reused: after
        # it, the upstream may no longer speak HTTP on it
        assert w.up.connections == 2, w.up.connections


def test_101_without_a_valid_accept_is_not_tunnelled():
    """A 101 that does not prove a WebSocket handshake (RFC 6455 §4.2.2)
    would give the client a raw pipe to the upstream: 502 and both closed."""
    with WsEnv(mode="badaccept", extra_config="") as w:
        w.env.proxy.expect_errors = True
        s = w.connect()
        s.sendall(handshake())
        resp = read_response(_Reader(s), "GET")
        assert resp.status == 502, resp
        assert w.up.closed.wait(5)
        assert "Sec-WebSocket-Accept" in w.env.proxy.error_log()
        s.close()


def test_blanks_around_the_key_and_accept_values_are_not_part_of_them():
    with WsEnv() as w:
        s = w.connect()
        s.sendall(b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY.encode() +
                  b" \t\r\nSec-WebSocket-Version: 13\r\n\r\n")
        head, _ = read_101(s)
        assert " 101 " in head, head
        s.close()


def test_offer_without_a_key_is_declined():
    with WsEnv() as w:
        s = w.connect()
        s.sendall(b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\n\r\n")
        resp = read_response(_Reader(s), "GET")
        assert resp.status == 426, resp
        assert b"upgrade:" not in w.up.heads[0].lower()
        s.close()


def test_101_arriving_while_draining_opens_no_tunnel():
    with WsEnv(mode="slow") as w:
        w.env.proxy.expect_errors = True
        s = w.connect()
        s.sendall(handshake())
        time.sleep(0.2)
        t0 = time.monotonic()
        w.env.proxy.signal(signal.SIGTERM)
        s.settimeout(5)
        data = recv_until(s, b"\r\n\r\n")
        assert b" 101 " not in data, data
        assert w.env.proxy.wait(5) is not None
        assert time.monotonic() - t0 < 3.0, "the drain waited for a tunnel"
        assert w.up.closed.wait(5)
        s.close()


def test_offer_on_a_covered_request_is_declined():
    """A POST with a key is claimed and stored: no tunnel, no Upgrade upstream."""
    with WsEnv() as w:
        s = w.connect()
        s.sendall(handshake(method=b"POST", more_headers=b"Idempotency-Key: ws-1\r\n"
                                                         b"Content-Length: 2\r\n", extra=b"{}"))
        resp = read_response(_Reader(s), "POST")
        assert resp.status == 426, resp
        up_head = w.up.heads[0].lower()
        assert b"upgrade:" not in up_head and b"connection: upgrade" not in up_head, up_head
        s.close()


def test_non_websocket_offers_are_declined():
    with WsEnv() as w:
        s = w.connect()
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                  b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
        resp = read_response(_Reader(s), "GET")
        assert resp.status == 426
        up_head = w.up.heads[0].lower()
        assert b"upgrade:" not in up_head and b"http2-settings" not in up_head, up_head
        s.close()


def test_idle_tunnel_is_closed_after_idle_timeout():
    with WsEnv(extra_config="idle_timeout 1s") as w:
        s = w.connect()
        s.sendall(handshake())
        head, _ = read_101(s)
        assert " 101 " in head
        # traffic keeps it open past one idle_timeout
        for i in range(3):
            time.sleep(0.5)
            s.sendall(b"ping%d" % i)
            assert b"echo:ping%d" % i in recv_until(s, b"echo:ping%d" % i)
        t0 = time.monotonic()
        s.settimeout(5)
        assert s.recv(100) == b""
        assert 0.7 < time.monotonic() - t0 < 3.0
        assert w.up.closed.wait(5)
        assert "nothing sent either way for idle_timeout" in w.env.proxy.error_log()


def test_drain_closes_tunnels_and_exits():
    with WsEnv() as w:
        s = w.connect()
        s.sendall(handshake())
        head, _ = read_101(s)
        assert " 101 " in head
        w.env.proxy.stop(timeout=5)
        s.settimeout(5)
        assert s.recv(100) == b""
        assert w.up.closed.wait(5)


def test_tunnel_counts_against_max_connections():
    with WsEnv(extra_config="max_connections 1\nworkers 1") as w:
        time.sleep(0.5 * SLOW)  # the harness's readiness probe is a connection too
        s = w.connect()
        s.sendall(handshake())
        head, _ = read_101(s)
        assert " 101 " in head
        other = w.connect()
        other.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        other.settimeout(1.0)
        try:
            got = other.recv(100)
            raise AssertionError(f"a second connection was served beside the tunnel: {got!r}")
        except socket.timeout:
            pass
        s.close()
        assert w.up.closed.wait(5)
        # once the tunnel is gone, its slot goes to the waiting connection
        other.settimeout(5)
        assert other.recv(12).startswith(b"HTTP/1.1 426")
        other.close()


def test_tunnel_holds_its_upstream_slot():
    """A tunnel's upstream socket counts in upstream_max_conns until it ends:
    with a limit of 1, a request to the same server waits for the tunnel."""
    with WsEnv(mode="decline", extra_config="workers 1\nupstream_max_conns 1\n"
                                             "upstream_connect_timeout 5s") as w:
        w.up.mode = "accept"
        s = w.connect()
        s.sendall(handshake())
        head, _ = read_101(s)
        assert " 101 " in head, head
        other = w.connect()
        other.sendall(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
        other.settimeout(0.8)
        try:
            got = other.recv(100)
            raise AssertionError(f"served past upstream_max_conns: {got!r}")
        except socket.timeout:
            pass
        s.close()  # the tunnel ends: its slot goes to the waiting request
        other.settimeout(5)
        resp = read_response(_Reader(other), "GET")
        assert resp.status == 426, resp  # the WebSocket upstream's answer to plain HTTP
        other.close()
