"""End-to-end tests of the plain proxy path the core relies on: round robin
over several upstreams, skipping a server that refuses, keep-alive reuse of
upstream connections, pipelined requests answered in order, and the headers
idemproxy adds on the way."""

import socket

from harness import Env, Upstream, request, wait_until

# Round robin and pooling are per worker (each has its own pool): pin one.
RR = "upstream_fail_timeout 30s\nworkers 1"


def test_round_robin_over_two_upstreams_and_skip_a_refusing_one():
    with Env() as env:
        other = Upstream(tmpdir=env.tmp)
        try:
            env.start_proxy(f"upstream http://127.0.0.1:{env.upstream_port} "
                            f"http://127.0.0.1:{other.port}\n{RR}")
            for _ in range(6):
                assert env.request("GET", "/x").status == 200
            assert env.upstream.count() == 3 and other.count() == 3, \
                (env.upstream.count(), other.count())
            other.stop()
            for _ in range(6):
                assert env.request("GET", "/x").status == 200
            # at most one request hit the stopped server and was re-sent to the live one
            assert env.upstream.count() == 9
            assert "skipping it" in env.proxy.error_log()
        finally:
            other.stop(check=False)


def test_a_server_that_comes_back_is_used_again_and_said_so():
    """With one upstream, the next request after an outage tries it anyway;
    once it connects, the log pairs the "skipping it" line with "reachable
    again" and round robin counts it back in at once."""
    with Env(extra_config=RR, expect_errors=True) as env:
        port = env.upstream_port
        env.upstream.stop()
        assert env.request("GET", "/down").status == 502
        assert "skipping it" in env.proxy.error_log()
        env.upstream = Upstream(port=port, tmpdir=env.tmp)
        assert env.request("GET", "/up").status == 200
        assert f"upstream 127.0.0.1:{port}: reachable again" in env.proxy.error_log()


def test_upstream_connections_are_reused():
    with Env(extra_config="workers 1") as env:
        for _ in range(5):
            assert env.request("GET", "/x").status == 200
        # ss is not needed: the test upstream counts connections it accepted
        conns = request(env.upstream_port, "GET", "/__connections").body.strip()
        assert conns == b"1", f"expected one pooled upstream connection, saw {conns!r}"


def test_pipelined_requests_are_answered_in_order():
    with Env() as env:
        s = socket.create_connection(("127.0.0.1", env.proxy.port), timeout=10)
        s.sendall(b"POST /a HTTP/1.1\r\nHost: t\r\nIdempotency-Key: p1\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                  b"GET /b HTTP/1.1\r\nHost: t\r\nX-Test-Delay: 100\r\n\r\n"
                  b"POST /a HTTP/1.1\r\nHost: t\r\nIdempotency-Key: p1\r\nContent-Length: 3\r\n\r\nabc"
                  b"GET /c HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
        s.close()
        paths = [p for p in (b'"path":"/a"', b'"path":"/b"', b'"path":"/c"')]
        order = sorted(paths, key=lambda p: data.find(p))
        assert data.count(b"HTTP/1.1 ") == 4, data
        assert order == paths, data
        assert data.count(b"Idempotent-Replayed: true") == 1
        assert env.upstream.count("p1") == 1


def test_forwarding_headers_are_added():
    with Env(extra_config="trusted_proxies 127.0.0.0/8") as env:
        r = env.request("GET", "/x", {"Host": "api.example", "X-Forwarded-For": "10.1.2.3"})
        assert r.header("X-Seen-Forwarded-For") == "10.1.2.3, 127.0.0.1"
        assert r.header("X-Seen-Forwarded-Proto") == "http"
        assert r.header("X-Seen-Forwarded-Host") == "api.example"
        assert "idemproxy" in (r.header("X-Seen-Via") or "")


def test_workers_share_one_guarantee():
    with Env(extra_config="workers 2") as env:
        from harness import wait_until
        wait_until(lambda: "2 workers" in env.proxy.error_log(), 5, what="the start-up line")
        from harness import parallel
        key = "w-" + env.tmp[-8:]

        def one(i):
            return env.post("/orders", key=key, body=b"{}", headers={"X-Test-Delay": "200"})
        answers = parallel(one, 40)
        codes = sorted(r.status for r in answers)
        assert env.upstream.count(key) == 1
        assert set(codes) <= {201, 409}, codes


def test_upstream_max_conns_queues_then_gives_up():
    with Env(extra_config="workers 1\nupstream_max_conns 1\nupstream_connect_timeout 1500ms") as env:
        from harness import background
        slow = {"X-Test-Delay": "500"}
        a = background(env.request, "GET", "/a", slow)
        b = background(env.request, "GET", "/b", slow)
        ra, rb = a.result(10), b.result(10)
        assert ra.status == 200 and rb.status == 200, (ra, rb)
        # both went over the one connection, one after the other
        conns = request(env.upstream_port, "GET", "/__connections").body.strip()
        assert conns == b"1", conns
        # a wait longer than upstream_connect_timeout gives up with 502
        long = background(env.request, "GET", "/c", {"X-Test-Delay": "2500"})
        wait_until(lambda: env.upstream.count() == 3, 5, what="/c holding the connection")
        r = env.request("GET", "/d")
        assert r.status == 502 and b"upstream-unavailable" in r.body, r
        assert long.result(10).status == 200
        assert "upstream_max_conns" in env.proxy.error_log()
