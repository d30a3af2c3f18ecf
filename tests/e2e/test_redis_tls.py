"""TLS to Redis and to sentinels (SPEC §8: redis_tls, redis_tls_ca,
redis_tls_server_name, redis_tls_certificate/_key): redis-server's own
--tls-port with certificates the tests make. The plain port each server
also has is only for the harness; idemproxy is pointed at the TLS port, where
a plain connection gets nothing.
"""
import os
import uuid

from certs import certs
from harness import (alone, SLOW, Env, Redis, SentinelSet, assert_problem, free_port, request,
                     wait_until)


def new_key():
    return "t-" + uuid.uuid4().hex


def _tls(c, auth_clients=False):
    return {"cert": c.server, "key": c.server_key, "ca": c.ca, "auth_clients": auth_clients}


def _with_tls_redis(c, extra, auth_clients=False, expect_errors=False):
    env = Env(proxy=False, expect_errors=expect_errors)
    env.__enter__()
    d = os.path.join(env.tmp, "tls-redis")
    os.makedirs(d)
    redis = Redis(tmpdir=d, tls=_tls(c, auth_clients))
    env.start_proxy(f"redis 127.0.0.1:{redis.tls_port}\nredis_tls on\n{extra}")
    return env, redis


def test_claims_and_replays_over_tls():
    c = certs()
    env, redis = _with_tls_redis(c, f"redis_tls_ca {c.ca}")
    try:
        key = new_key()
        first = env.post("/orders", key=key, body=b'{"a":1}')
        assert first.status == 201, first
        again = env.post("/orders", key=key, body=b'{"a":1}')
        assert again.status == 201 and again.header("Idempotent-Replayed") == "true", again
        assert again.body == first.body and env.upstream.count(key) == 1
        assert redis.key_state(redis.keys("idem:*")[0])["state"] == "done"
        assert f"redis 127.0.0.1:{redis.tls_port}: connected" in env.proxy.error_log()
    finally:
        env.__exit__(None, None, None)
        redis.close()


def test_client_certificate_when_redis_asks_for_one():
    c = certs()
    env, redis = _with_tls_redis(
        c, f"redis_tls_ca {c.ca}\nredis_tls_certificate {c.client}\n"
           f"redis_tls_certificate_key {c.client_key}", auth_clients=True)
    try:
        key = new_key()
        assert env.post("/orders", key=key).status == 201
        assert env.post("/orders", key=key).header("Idempotent-Replayed") == "true"
    finally:
        env.__exit__(None, None, None)
        redis.close()


def test_a_certificate_that_does_not_verify_is_503_with_a_clear_line():
    """Redis presents a certificate from a CA idemproxy does not trust: no
    crash, every keyed request 503 store-unavailable, nothing executed,
    /readyz 503, and one error line that says why."""
    c = certs()
    admin = free_port()
    env = Env(proxy=False, expect_errors=True)
    env.__enter__()
    d = os.path.join(env.tmp, "tls-redis")
    os.makedirs(d)
    redis = Redis(tmpdir=d, tls={"cert": c.untrusted, "key": c.untrusted_key, "ca": c.ca})
    try:
        proxy = env.start_proxy(f"redis 127.0.0.1:{redis.tls_port}\nredis_tls on\n"
                                f"redis_tls_ca {c.ca}\nadmin_listen 127.0.0.1:{admin}")
        key = new_key()
        for _ in range(3):
            assert_problem(env.post("/orders", key=key), 503, "store-unavailable")
        assert env.upstream.count(key) == 0
        assert request(admin, "GET", "/readyz").status == 503
        wait_until(lambda: "certificate verify failed" in proxy.error_log(), 3 * SLOW,
                   what="the reason in the error log")
        lines = [ln for ln in proxy.error_log().splitlines() if "certificate verify failed" in ln]
        assert lines[0].split()[1] == "error", lines[0]
        assert proxy.running()
    finally:
        env.__exit__(None, None, None)
        redis.close()


def test_server_name_is_checked_against_the_certificate():
    """redis_tls_server_name names what the certificate must say: a name it
    does not carry fails verification; one it carries passes."""
    c = certs()
    env, redis = _with_tls_redis(c, f"redis_tls_ca {c.ca}\nredis_tls_server_name wrong.example",
                                 expect_errors=True)
    try:
        assert_problem(env.post("/orders", key=new_key()), 503, "store-unavailable")
        env.start_proxy(f"redis 127.0.0.1:{redis.tls_port}\nredis_tls on\n"
                        f"redis_tls_ca {c.ca}\nredis_tls_server_name localhost")
        wait_until(lambda: env.post("/orders", key=new_key()).status == 201, 5 * SLOW,
                   what="a claim over TLS to localhost")
    finally:
        env.__exit__(None, None, None)
        redis.close()


@alone
def test_sentinels_and_primary_over_tls():
    """redis_sentinel with redis_tls: the sentinels are asked over TLS, and
    the primary they name is reached over TLS."""
    c = certs()
    with Env(proxy=False, redis=False) as env:
        sentinels = SentinelSet(os.path.join(env.tmp, "redis"), replicas=1, tls=_tls(c))
        try:
            proxy = env.start_proxy(f"{sentinels.directive()}\nredis_tls on\nredis_tls_ca {c.ca}")
            key = new_key()
            wait_until(lambda: env.post("/orders", key=key).status == 201, 5 * SLOW,
                       what="a claim through the sentinels, over TLS")
            assert env.post("/orders", key=key).header("Idempotent-Replayed") == "true"
            assert f"redis: primary mymaster is at 127.0.0.1:{sentinels.primary_port()}" \
                in proxy.error_log()
            proxy.stop()
        finally:
            sentinels.close()
