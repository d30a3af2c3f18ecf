"""An outcome that is unknown stays unknown (SPEC §4.6): a lease that runs out
without its owner finishing (the instance was killed) and an upstream that
failed after the request was sent both block the key for unknown_ttl, on
every instance sharing the Redis; a completion that comes late still stores
the answer; keys of the hash layout of earlier versions are still read.
"""
import signal
import time
import uuid

from harness import alone, SLOW, Env, Proxy, assert_problem, background, wait_until


def new_key():
    return "u-" + uuid.uuid4().hex


@alone
def test_killed_instance_leaves_its_key_unknown_on_every_instance():
    """Instance A is SIGKILLed mid-request. Instance B, sharing the Redis,
    answers 409 conflict while A's lease would last, then 409
    outcome-unknown once it ran out, and executes the retry only after
    unknown_ttl; A started again answers the same."""
    lock, unknown = 2.0 * SLOW, 3.0 * SLOW
    cfg = (f"lock_ttl {int(lock * 1000)}ms\nupstream_timeout {int(lock * 500)}ms\n"
           f"unknown_ttl {int(unknown * 1000)}ms")
    with Env(extra_config=cfg) as env:
        b = Proxy(env.upstream_port, env.redis_port, cfg)
        try:
            key = new_key()
            t0 = time.monotonic()
            background(env.post, "/orders", key=key, headers={"X-Test-Delay": "800"}, timeout=5)
            wait_until(lambda: env.upstream.count(key) == 1, 3, what="the request at the upstream")
            env.proxy.stop(sig=signal.SIGKILL, check=False)

            r = b.request("POST", "/orders", {"Idempotency-Key": key}, b"{}")
            assert_problem(r, 409, "conflict")

            time.sleep(max(0, t0 + lock + 0.3 * SLOW - time.monotonic()))
            r = b.request("POST", "/orders", {"Idempotency-Key": key}, b"{}")
            assert_problem(r, 409, "outcome-unknown")
            assert 1 <= int(r.header("Retry-After")) <= unknown + 1, r.header("Retry-After")
            env.proxy.start()  # A again: it reads the same key the same way
            assert_problem(env.post("/orders", key=key), 409, "outcome-unknown")
            assert env.upstream.count(key) == 1

            time.sleep(max(0, t0 + lock + unknown + 0.3 * SLOW - time.monotonic()))
            r = b.request("POST", "/orders", {"Idempotency-Key": key}, b"{}")
            assert r.status == 201, r
            assert env.upstream.count(key) == 2
            assert [e["idem"] for e in b.access_log()] == ["inflight", "unknown", "miss"]
        finally:
            b.close()


def test_upstream_timeout_blocks_the_key_for_unknown_ttl_not_lock_ttl():
    cfg = "lock_ttl 1s\nupstream_timeout 300ms\nunknown_ttl 3s"
    with Env(extra_config=cfg, expect_errors=True) as env:
        key = new_key()
        r = env.post("/orders", key=key, headers={"X-Test-Delay": "600"})
        assert_problem(r, 504, "upstream-timeout")
        t0 = time.monotonic()
        time.sleep(1.5)  # past lock_ttl
        assert_problem(env.post("/orders", key=key), 409, "outcome-unknown")
        k = env.redis.key_state(env.redis.keys("idem:*")[0])
        assert k["state"] == "unknown" and 0 < k["pttl"] <= 3000, k
        time.sleep(max(0, t0 + 3.2 - time.monotonic()))
        assert env.post("/orders", key=key).status == 201
        assert env.upstream.count(key) == 2


def test_completion_after_the_lease_ran_out_still_stores_the_answer():
    """Redis is frozen while the upstream works, past the lease: the key
    reads unknown meanwhile, but the owner's completion, sent again, lands
    once Redis answers (its token is still on the key), and the retry gets
    the replay; nothing executes twice."""
    cfg = "lock_ttl 2s\nupstream_timeout 1800ms\nredis_timeout 200ms\nunknown_ttl 30s"
    with Env(extra_config=cfg, expect_errors=True) as env:
        key = new_key()
        job = background(env.post, "/orders", key=key, headers={"X-Test-Delay": "1200"},
                         timeout=10)
        wait_until(lambda: env.upstream.count(key) == 1, 3, what="the request at the upstream")
        rkey = env.redis.keys("idem:*")[0]
        env.redis.proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(3.0)  # the lease (2 s) runs out in Redis' clock meanwhile
        finally:
            env.redis.proc.send_signal(signal.SIGCONT)
        first = job.result(10)
        assert first.status == 201, first
        wait_until(lambda: env.redis.key_state(rkey)["state"] == "done", 10 * SLOW,
                   what="the late completion stored")
        r = env.post("/orders", key=key)
        assert r.status == 201 and r.header("Idempotent-Replayed") == "true", r
        assert r.body == first.body
        assert env.upstream.count(key) == 1
        assert "storing the response failed" in env.proxy.error_log()


def test_keys_of_the_hash_layout_are_still_read():
    """A Redis that still holds keys written by an earlier version (a hash
    per key): replays, conflicts and unknown outcomes answer as they did."""
    with Env() as env:
        done, inflight, unknown = new_key(), new_key(), new_key()
        first = env.post("/orders", key=done, body=b'{"a":1}')
        assert first.status == 201
        rkey = env.redis.keys("idem:*")[0]
        k = env.redis.key_state(rkey)
        # the same answer, as the hash layout held it
        env.redis.cmd("DEL", rkey)
        env.redis.cmd("HSET", rkey, "s", "done", "f", k["fingerprint"], "r", k["record"], "o", "")
        env.redis.cmd("PEXPIRE", rkey, 60000)
        r = env.post("/orders", key=done, body=b'{"a":1}')
        assert r.status == 201 and r.header("Idempotent-Replayed") == "true", r
        assert r.body == first.body
        assert_problem(env.post("/orders", key=done, body=b'{"a":2}'), 422,
                       "fingerprint-mismatch")

        prefix = rkey[: -len(done)]
        for key, state in ((inflight, "inflight"), (unknown, "unknown")):
            env.redis.cmd("HSET", prefix + key, "s", state, "f", k["fingerprint"], "o", "x" * 32)
            env.redis.cmd("PEXPIRE", prefix + key, 60000)
        # the fingerprint is the one of {"a":1} at /orders
        assert_problem(env.post("/orders", key=inflight, body=b'{"a":1}'), 409, "conflict")
        assert_problem(env.post("/orders", key=unknown, body=b'{"a":1}'), 409, "outcome-unknown")
        assert env.upstream.count() == 1
