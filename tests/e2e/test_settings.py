"""End-to-end tests of the global settings around the store and the headers:
key_prefix, key_header, replay_header, redis_db, redis_user with
redis_password_file, and per-route policy values (scope, lock_ttl,
max_request_body, max_cached_body, on_inflight)."""

import os
import time
import uuid

from harness import SLOW, Env, assert_problem, background, wait_until


def new_key():
    return "k-" + uuid.uuid4().hex


def test_key_prefix_key_header_and_replay_header():
    conf = "key_prefix shop:idem:\nkey_header X-Request-Id\nreplay_header X-Replayed"
    with Env(extra_config=conf) as env:
        k = new_key()
        h = {"X-Request-Id": k}
        assert env.request("POST", "/o", h, b"{}").status == 201
        again = env.request("POST", "/o", h, b"{}")
        assert again.header("X-Replayed") == "true" and again.header("Idempotent-Replayed") is None
        assert env.upstream.count() == 1
        assert [key.startswith("shop:idem:") for key in env.redis.keys("*")] == [True]
        # the default header is no longer a key
        assert env.request("POST", "/o", {"Idempotency-Key": k}, b"{}").status == 201
        assert env.upstream.count() == 2


def test_redis_db():
    with Env(extra_config="redis_db 3") as env:
        assert env.post("/o", key=new_key()).status == 201
        info = env.redis.cmd("INFO", "keyspace").decode()
        assert "db3:keys=1" in info and "db0:" not in info, info


def test_redis_acl_user_and_password_file():
    with Env(proxy=False) as env:
        env.redis.cmd("ACL", "SETUSER", "idem", "on", ">s3cret-pw", "~*", "&*", "+@all")
        pw = os.path.join(env.tmp, "redis-password")
        with open(pw, "w") as f:
            f.write("s3cret-pw\n")
        env.start_proxy(f"redis_user idem\nredis_password_file {pw}")
        assert env.post("/o", key=new_key()).status == 201
        log = env.proxy.error_log() + env.proxy.stderr()
        assert "s3cret-pw" not in log
        clients = env.redis.cmd("CLIENT", "LIST").decode()
        assert "user=idem" in clients, clients


def test_wrong_redis_password_answers_503_and_says_why():
    with Env(proxy=False, expect_errors=True) as env:
        env.redis.cmd("ACL", "SETUSER", "idem", "on", ">right", "~*", "&*", "+@all")
        pw = os.path.join(env.tmp, "redis-password")
        with open(pw, "w") as f:
            f.write("wrong\n")
        env.start_proxy(f"redis_user idem\nredis_password_file {pw}")
        r = env.post("/o", key=new_key())
        assert_problem(r, 503, "store-unavailable")
        assert env.upstream.count() == 0
        wait_until(lambda: "setup refused" in env.proxy.error_log(), 3, what="AUTH failure logged")
        time.sleep(1.5)
        # backing off, not hammering: one error line per link and worker, then debug lines
        # at a doubling interval (50 ms .. 1 s), not one every 50 ms
        lines = env.proxy.error_log().splitlines()
        errors = [ln for ln in lines if " error " in ln and "setup refused" in ln]
        attempts = [ln for ln in lines if "setup refused" in ln]
        assert len(errors) <= 4, errors
        assert len(attempts) <= 4 * 6, f"{len(attempts)} AUTH attempts in about 1.5 s"
        assert "wrong" not in env.proxy.error_log().replace("wrongpass", "")


def test_per_route_scope_limits_and_lease():
    conf = ("upstream_timeout 4s\n"
            "route /shared { scope none; max_request_body 16; max_cached_body 10; "
            "lock_ttl 5s; on_inflight wait 3s }")
    with Env(extra_config=conf) as env:
        k = new_key()
        a = env.request("POST", "/shared", {"Idempotency-Key": k, "Authorization": "A"}, b"{}")
        b = env.request("POST", "/shared", {"Idempotency-Key": k, "Authorization": "B"}, b"{}")
        assert a.status == 201 and b.header("Idempotent-Replayed") == "true"
        assert_problem(env.post("/shared", key=new_key(), body=b"x" * 17), 413, "payload-too-large")
        # global max_request_body (1m) still applies elsewhere
        assert env.post("/other", key=new_key(), body=b"x" * 17).status == 201
        big = new_key()
        first = env.request("POST", "/shared", {"Idempotency-Key": big, "X-Test-Body-Size": "50"})
        again = env.request("POST", "/shared", {"Idempotency-Key": big})
        assert len(first.body) == 50 and again.body == b""
        assert again.header("Idempotency-Replay") == "omitted"
        # lock_ttl 5s on the route: the lease is ~5s, not the global 60s
        slow = new_key()
        job = background(env.request, "POST", "/shared",
                         {"Idempotency-Key": slow, "X-Test-Delay": "800"}, b"{}")
        wait_until(lambda: env.upstream.count(slow) == 1, 3, what="slow request upstream")
        rkey = [x for x in env.redis.keys("idem:*") if x.endswith(slow)][0]
        k = env.redis.key_state(rkey)
        assert 3000 < k["pttl"] - k["unknown_ms"] <= 5000, k
        t0 = time.monotonic()
        dup = env.request("POST", "/shared", {"Idempotency-Key": slow}, b"{}")
        assert dup.status == 201 and dup.header("Idempotent-Replayed") == "true"
        assert time.monotonic() - t0 < 2.5
        assert job.result(10).status == 201


def test_redis_over_a_unix_socket():
    import subprocess
    with Env(proxy=False) as env:
        sock = os.path.join(env.tmp, "redis.sock")
        proc = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", sock,
                                 "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
                                 "--dir", env.tmp], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: os.path.exists(sock), 5, what="redis unix socket")
            env.start_proxy(f"redis unix:{sock}")
            k = new_key()
            assert env.post("/o", key=k).status == 201
            assert env.post("/o", key=k).header("Idempotent-Replayed") == "true"
            assert env.upstream.count() == 1
            env.proxy.stop()
        finally:
            proc.terminate()
            proc.wait(5)


def test_redis_timeout_answers_503_when_redis_stalls():
    with Env(extra_config="redis_timeout 300ms", expect_errors=True) as env:
        assert env.post("/o", key=new_key()).status == 201
        env.redis.cmd("CLIENT", "PAUSE", "1500", "ALL")
        t0 = time.monotonic()
        r = env.post("/o", key=new_key())
        took = time.monotonic() - t0
        assert_problem(r, 503, "store-unavailable")
        assert took < 1.2, f"503 after {took:.2f}s, not after redis_timeout 300ms"
        assert "timed out" in env.proxy.error_log()
        # Redis answers again: so does idemproxy, without a restart
        wait_until(lambda: env.post("/o", key=new_key()).status == 201, 5,
                   what="recovery after the pause")


def test_custom_token_header_and_keepalive_off_and_quiet_logs():
    conf = ("token_endpoint /t\ntoken_header X-Form-Token\nroute /f { key token }\n"
            "upstream_keepalive 0\nworkers 1\naccess_log off\nlog_level warn")
    with Env(extra_config=conf) as env:
        t = env.request("POST", "/t")
        assert t.status == 201 and t.header("X-Form-Token")
        assert env.request("POST", "/f", {"X-Form-Token": t.header("X-Form-Token")}).status == 201
        for _ in range(3):
            assert env.request("GET", "/x").status == 200
        from harness import request as raw_request
        conns = raw_request(env.upstream_port, "GET", "/__connections").body.strip()
        assert conns == b"4", f"upstream_keepalive 0 must not reuse connections: {conns!r}"
        assert env.proxy.access_log() == []
        assert " info " not in env.proxy.error_log() and " debug " not in env.proxy.error_log()


def redis_link_ready(env):
    """Waits until idemproxy's one worker has its command link to Redis set
    up: a claim must be sent, and time out, in the stall that follows (a
    link still connecting when Redis is frozen answers 503 sending nothing,
    and there is no lost claim to release)."""
    wait_until(lambda: f"redis 127.0.0.1:{env.redis.port}: connected" in env.proxy.error_log(),
               5 * SLOW, what="the Redis link set up")


def test_claim_lost_in_a_redis_stall_does_not_lock_the_key():
    import signal
    with Env(extra_config="redis_timeout 300ms\nworkers 1", expect_errors=True) as env:
        k = new_key()
        redis_link_ready(env)
        os.kill(env.redis.proc.pid, signal.SIGSTOP)
        try:
            assert_problem(env.post("/o", key=k), 503, "store-unavailable")
        finally:
            os.kill(env.redis.proc.pid, signal.SIGCONT)
        # the claim that timed out ran once Redis resumed; idemproxy releases it
        wait_until(lambda: env.post("/o", key=k).status == 201, 6,
                   what="the key free again after the stall")
        assert env.upstream.count(k) == 1


def test_claim_lost_in_a_long_redis_stall_is_released_after_it():
    """Redis stays frozen longer than idemproxy's release attempts take: the
    releases that fail while it is frozen do not count, so the claim that
    lands when Redis resumes is still given back."""
    import signal
    with Env(extra_config="redis_timeout 200ms\nworkers 1", expect_errors=True) as env:
        k = new_key()
        redis_link_ready(env)
        os.kill(env.redis.proc.pid, signal.SIGSTOP)
        try:
            assert_problem(env.post("/o", key=k), 503, "store-unavailable")
            time.sleep(4.0)  # past three release attempts, one second apart
        finally:
            os.kill(env.redis.proc.pid, signal.SIGCONT)
        wait_until(lambda: env.post("/o", key=k).status == 201, 6,
                   what="the key free again after the long stall")
        assert env.upstream.count(k) == 1
        assert "released a claim whose reply was lost" in env.proxy.error_log()
