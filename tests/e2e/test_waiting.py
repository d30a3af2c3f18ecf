"""End-to-end tests of waiting duplicates (SPEC §4.4, on_inflight wait) across
instances: two idemproxy processes share one Redis; a duplicate parked on one
wakes when the first attempt finishes on the other."""

import os
import socket
import time
import uuid

from harness import Env, Proxy, background, request, wait_until

WAIT = "on_inflight wait 5s"


def new_key():
    return "k-" + uuid.uuid4().hex


def post(port, key, headers=None, body=b"{}"):
    h = [("Idempotency-Key", key)] + list((headers or {}).items())
    return request(port, "POST", "/orders", h, body, timeout=15)


def second_proxy(env, extra=WAIT):
    """Instance B: same Redis and upstream as env.proxy, its own port and logs."""
    tmpdir = os.path.join(env.tmp, "b")
    os.makedirs(tmpdir, exist_ok=True)
    return Proxy(env.upstream_port, env.redis_port, extra, tmpdir=tmpdir)


def test_duplicate_on_another_instance_wakes_when_the_first_finishes():
    with Env(extra_config=WAIT) as env:
        b = second_proxy(env)
        try:
            key = new_key()
            first = background(post, env.proxy.port, key, {"X-Test-Delay": "1200"})
            wait_until(lambda: env.upstream.count(key) == 1, 3, what="first at the upstream")
            dup = background(post, b.port, key)
            r1 = first.result(10)
            t_first = time.monotonic()
            r2 = dup.result(10)
            woke_after = time.monotonic() - t_first
            assert r1.status == 201 and r1.header("Idempotent-Replayed") is None, r1
            assert r2.status == 201 and r2.header("Idempotent-Replayed") == "true", r2
            assert r2.body == r1.body
            assert woke_after < 0.5, f"parked duplicate answered {woke_after:.2f}s after the first"
            assert env.upstream.count(key) == 1
            lines = [e for e in b.access_log() if e.get("key") == key]
            assert lines and lines[-1]["idem"] == "replay", lines
        finally:
            b.close()


def test_released_first_attempt_lets_the_parked_duplicate_execute():
    with Env(extra_config=WAIT) as env:
        b = second_proxy(env)
        try:
            key = new_key()
            first = background(post, env.proxy.port, key,
                               {"X-Test-Delay": "800", "X-Test-Status": "503"})
            wait_until(lambda: env.upstream.count(key) == 1, 3, what="first at the upstream")
            r2 = post(b.port, key)
            assert first.result(10).status == 503
            assert r2.status == 201 and r2.header("Idempotent-Replayed") is None, r2
            assert env.upstream.count(key) == 2
        finally:
            b.close()


def test_parked_client_that_leaves_does_not_disturb_the_first():
    with Env(extra_config=WAIT) as env:
        key = new_key()
        first = background(post, env.proxy.port, key, {"X-Test-Delay": "800"})
        wait_until(lambda: env.upstream.count(key) == 1, 3, what="first at the upstream")
        s = socket.create_connection(("127.0.0.1", env.proxy.port))
        s.sendall(b"POST /orders HTTP/1.1\r\nHost: t\r\nIdempotency-Key: " + key.encode() +
                  b"\r\nContent-Length: 2\r\n\r\n{}")
        time.sleep(0.2)
        s.close()
        assert first.result(10).status == 201
        again = post(env.proxy.port, key)
        assert again.status == 201 and again.header("Idempotent-Replayed") == "true"
        assert env.upstream.count(key) == 1
