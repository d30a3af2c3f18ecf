"""End-to-end tests of the keys admin API (SPEC §9): GET /keys/KEY,
POST /keys/KEY/release and DELETE /keys/KEY on the admin listener, behind
the bearer token of admin_token_file.

What a user sees is asserted: the status and JSON of the admin call, what
the upstream executed (its own count) and what Redis holds afterwards.
"""
import contextlib
import hashlib
import os
import signal
import time
import uuid
from urllib.parse import quote

from harness import (SLOW, Env, Redis, Sentinel, assert_problem, background, free_port, request,
                     wait_until)

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def new_key():
    return "a-" + uuid.uuid4().hex


@contextlib.contextmanager
def keys_env(extra="", token=TOKEN, expect_errors=False):
    """An Env whose proxy has admin_listen and, unless token is None,
    admin_token_file (the file written in the Env's directory)."""
    with Env(proxy=False, expect_errors=expect_errors) as env:
        env.admin_port = free_port()
        env.token_path = os.path.join(env.tmp, "admin.token")
        config = f"admin_listen 127.0.0.1:{env.admin_port}\n"
        if token is not None:
            with open(env.token_path, "w") as f:
                f.write(token + "\n")
            os.chmod(env.token_path, 0o600)
            config += f"admin_token_file {env.token_path}\n"
        env.start_proxy(config + extra)
        yield env


def admin(env, method, key, query="", headers=AUTH, suffix=""):
    path = "/keys/" + quote(key, safe="") + suffix + (("?" + query) if query else "")
    return request(env.admin_port, method, path, headers)


def show(env, key, query="", headers=AUTH):
    return admin(env, "GET", key, query, headers)


def release(env, key, query=""):
    return admin(env, "POST", key, query, suffix="/release")


def delete(env, key, query="", headers=AUTH):
    return admin(env, "DELETE", key, query, headers)


def scope_hash(value):
    """The scope of a single header:NAME source, as policy.c hashes it."""
    return hashlib.sha256(value.strip(" \t").encode()).hexdigest()[:32]


def wait_executing(env, key):
    wait_until(lambda: env.upstream.count(key) == 1, 5 * SLOW, what="the request at the upstream")


# ---------------------------------------------------------------- show


def test_keys_admin_show_done_inflight_unknown_absent():
    cfg = "upstream_timeout 3s\nlock_ttl 5s\nunknown_ttl 30s"
    with keys_env(cfg, expect_errors=True) as env:
        done, busy, lost = new_key(), new_key(), new_key()
        first = env.post(key=done, body=b'{"n":1}')
        assert first.status == 201, first
        r = show(env, done)
        assert r.status == 200 and r.header("Content-Type") == "application/json", r
        j = r.json()
        held = env.redis.key_state(j["redis_key"])
        assert j["redis_key"] == f"idem:-:{done}" and j["key"] == done and j["scope"] == "-", j
        assert j["state"] == "done" and j["action"] == "shown" and j["legacy"] is False, j
        assert j["fingerprint"].encode() == held["fingerprint"], (j, held)
        assert j["status"] == 201 and j["body_size"] == len(first.body), j
        assert j["body_omitted"] is False and j["created_at"] is None, j
        stored = {n.lower(): v for n, v in j["headers"]}
        assert stored["content-type"] == first.header("Content-Type"), j["headers"]
        assert 23 * 3600 * 1000 < j["ttl_ms"] <= 24 * 3600 * 1000, j

        job = background(env.post, key=busy, headers={"X-Test-Delay": "900"})
        wait_executing(env, busy)
        j = show(env, busy).json()
        assert j["state"] == "inflight" and 0 < j["lease_ms"] <= 5000, j
        assert 30000 < j["ttl_ms"] <= 35000 and "status" not in j, j
        assert job.result().status == 201

        r = env.post(key=lost, headers={"X-Test-Delay": "3500"})
        assert_problem(r, 504, "upstream-timeout")
        j = show(env, lost).json()
        assert j["state"] == "unknown" and 0 < j["ttl_ms"] <= 30000 and "lease_ms" not in j, j

        r = show(env, new_key())
        assert_problem(r, 404, "not-found")
        assert env.upstream.count() == 3


# ---------------------------------------------------------------- release


def test_keys_admin_release_inflight_and_unknown_lets_the_next_request_execute():
    cfg = "upstream_timeout 3s\nunknown_ttl 60s"
    with keys_env(cfg, expect_errors=True) as env:
        busy, lost = new_key(), new_key()
        job = background(env.post, key=busy, headers={"X-Test-Delay": "2000"})
        wait_executing(env, busy)
        assert_problem(env.post(key=busy), 409, "conflict")
        r = release(env, busy)
        assert r.status == 200, r
        j = r.json()
        assert j["action"] == "released" and j["state"] == "inflight", j
        assert env.redis.cmd("EXISTS", j["redis_key"]) == 0
        r = env.post(key=busy)
        assert r.status == 201 and r.header("Idempotent-Replayed") is None, r
        assert env.upstream.count(busy) == 2
        job.result()  # the first finishes; its lease was lost, so it stores nothing over ours

        assert_problem(env.post(key=lost, headers={"X-Test-Delay": "3500"}), 504,
                       "upstream-timeout")
        assert_problem(env.post(key=lost), 409, "outcome-unknown")
        j = release(env, lost).json()
        assert j["action"] == "released" and j["state"] == "unknown", j
        assert env.post(key=lost).status == 201
        assert env.upstream.count(lost) == 2

        assert_problem(release(env, new_key()), 404, "not-found")
        log = env.proxy.error_log()
        assert f'release key "{busy}" scope - (idem:-:{busy}): was inflight, now absent' in log
        assert f'admin: 127.0.0.1:' in log, log


def test_keys_admin_release_of_a_done_key_is_409_and_changes_nothing():
    with keys_env() as env:
        key = new_key()
        first = env.post(key=key)
        r = release(env, key)
        assert_problem(r, 409, "already-completed")
        assert "DELETE" in r.json()["detail"], r.json()
        again = env.post(key=key)
        assert again.header("Idempotent-Replayed") == "true" and again.body == first.body
        assert env.upstream.count(key) == 1
        assert f'release key "{key}" scope - (idem:-:{key}): was done' in env.proxy.error_log()


# ---------------------------------------------------------------- delete


def test_keys_admin_delete_of_a_done_key_lets_the_next_request_execute():
    with keys_env() as env:
        key = new_key()
        assert env.post(key=key).status == 201
        r = delete(env, key)
        assert r.status == 200, r
        j = r.json()
        assert j["action"] == "deleted" and j["state"] == "done" and j["status"] == 201, j
        assert env.redis.keys("idem:*") == []
        r = env.post(key=key)
        assert r.status == 201 and r.header("Idempotent-Replayed") is None, r
        assert env.upstream.count(key) == 2
        assert_problem(delete(env, new_key()), 404, "not-found")


def test_keys_admin_reads_and_deletes_keys_of_the_hash_layout():
    """Keys written by earlier versions (a hash per key) are shown and
    deleted; a release frees one that is in flight, never a done one."""
    with keys_env() as env:
        done, busy = new_key(), new_key()
        assert env.post(key=done).status == 201
        rkey = f"idem:-:{done}"
        k = env.redis.key_state(rkey)
        env.redis.cmd("DEL", rkey)
        env.redis.cmd("HSET", rkey, "s", "done", "f", k["fingerprint"], "r", k["record"])
        env.redis.cmd("PEXPIRE", rkey, 60000)
        env.redis.cmd("HSET", f"idem:-:{busy}", "s", "inflight", "f", "x", "o", "y" * 32)
        env.redis.cmd("PEXPIRE", f"idem:-:{busy}", 60000)

        j = show(env, done).json()
        assert j["legacy"] is True and j["state"] == "done" and j["status"] == 201, j
        assert 0 < j["ttl_ms"] <= 60000, j
        assert_problem(release(env, done), 409, "already-completed")
        j = release(env, busy).json()
        assert j["legacy"] is True and j["state"] == "inflight" and j["action"] == "released", j
        assert delete(env, done).json()["state"] == "done"
        assert env.redis.keys("idem:*") == []


# ---------------------------------------------------------------- scope and names


def test_keys_admin_scope_by_raw_value_hash_and_route():
    cfg = ("key_namespace route\n"
           "route /webhooks { key header:X-Delivery; scope none }\n"
           "route /orders { scope header:Authorization header:X-Account }")
    with keys_env(cfg) as env:
        key, hook, both = new_key(), new_key(), new_key()
        customer = "Bearer cust-1"
        assert env.post("/pay", key=key, headers={"Authorization": customer}).status == 201
        assert_problem(show(env, key), 404, "not-found")  # the anonymous scope
        r = show(env, key, "scope=" + quote(f"  {customer} ", safe=""))
        assert r.status == 200, r
        j = r.json()
        assert j["scope"] == scope_hash(customer) and j["state"] == "done", j
        assert env.redis.cmd("EXISTS", j["redis_key"]) == 1
        assert show(env, key, "scope_hash=" + j["scope"]).json()["redis_key"] == j["redis_key"]

        # scope none, and the route named in the key (key_namespace route)
        r = env.request("POST", "/webhooks/x", {"X-Delivery": hook}, b"{}")
        assert r.status == 201, r
        assert_problem(show(env, hook), 404, "not-found")
        j = show(env, hook, "route=/webhooks").json()
        assert j["scope"] == "-" and j["state"] == "done", j
        assert_problem(show(env, hook, "route=/webhooks&scope=x"), 400, "bad-request")

        # two scope sources: scope= and scope2=, in the order configured
        h = {"Authorization": customer, "X-Account": "acct_9"}
        assert env.post("/orders", key=both, headers=h).status == 201
        assert_problem(show(env, both, "route=/orders&scope=" + quote(customer)), 404,
                       "not-found")
        q = "route=/orders&scope=" + quote(customer) + "&scope2=acct_9"
        assert show(env, both, q).json()["state"] == "done"

        for bad in ("scop=x", "scope_hash=XYZ", "route=/nope", "scope=a&scope=b",
                    "scope=a&scope_hash=" + "0" * 32, "scop=1&scope=" + quote(customer)):
            assert_problem(show(env, key, bad), 400, "bad-request")
        # the raw scope value is a credential: logged only as its hash
        assert "cust-1" not in env.proxy.error_log()
        assert f"scope {scope_hash(customer)} (" in env.proxy.error_log()


def test_keys_admin_key_needing_percent_encoding():
    with keys_env() as env:
        key = "ord/7?a=b&c%d#e+f"  # '/', '?', '&', '%', '#', '+'
        assert env.post(key=key).status == 201
        j = show(env, key).json()
        assert j["key"] == key and j["redis_key"] == "idem:-:" + key and j["state"] == "done", j
        # '+' is itself in a path, not a space
        r = request(env.admin_port, "GET", "/keys/" + quote(key, safe="+"), AUTH)
        assert r.status == 200 and r.json()["key"] == key, r
        assert_problem(request(env.admin_port, "GET", "/keys/a/b", AUTH), 400, "bad-request")
        assert_problem(request(env.admin_port, "GET", "/keys/%zz", AUTH), 400, "bad-request")
        assert delete(env, key).status == 200
        assert env.redis.keys("idem:*") == []


# ---------------------------------------------------------------- access


def test_keys_admin_needs_the_bearer_token():
    with keys_env() as env:
        key = new_key()
        assert env.post(key=key).status == 201
        r = show(env, key, headers={})
        assert_problem(r, 401, "unauthorized")
        assert r.header("WWW-Authenticate") == "Bearer", r
        for wrong in (f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer ", f"Basic {TOKEN}"):
            r = show(env, key, headers={"Authorization": wrong})
            assert_problem(r, 401, "unauthorized")
            assert r.header("WWW-Authenticate").startswith("Bearer"), r
        r = delete(env, key, headers={"Authorization": "Bearer nope"})
        assert r.status == 401 and env.redis.keys("idem:*") != [], r
        assert show(env, key, headers={"Authorization": f"bearer {TOKEN}"}).status == 200
        assert request(env.admin_port, "GET", "/healthz").status == 200
        assert "401 No bearer token" in env.proxy.error_log()

        # SIGHUP reads the file again: the new token works, the old one not
        with open(env.token_path, "w") as f:
            f.write("rotated-admin-token\n")
        os.chmod(env.token_path, 0o600)
        env.proxy.signal(signal.SIGHUP)
        new = {"Authorization": "Bearer rotated-admin-token"}
        wait_until(lambda: show(env, key, headers=new).status == 200, 5 * SLOW,
                   what="the new token after SIGHUP")
        assert show(env, key).status == 401


def test_keys_admin_401s_are_logged_once_per_10s_with_a_count():
    """A client trying tokens gets 401 every time, but the log says so once,
    then, when 10 s have passed, how many more there were (no later 401
    needed for the count to be written)."""
    with keys_env() as env:
        key = new_key()
        for i in range(40):
            assert show(env, key, headers={"Authorization": f"Bearer guess-{i}"}).status == 401
        lines = [line for line in env.proxy.error_log().splitlines() if ": 401 " in line]
        assert len(lines) == 1 and "Wrong bearer token." in lines[0], lines
        tally = "admin: 39 more 401s in the 10 s after the last such line (the last from 127.0.0.1:"
        wait_until(lambda: tally in env.proxy.error_log(), 15 * SLOW, what="the count of 401s")
        assert len([line for line in env.proxy.error_log().splitlines() if "401" in line]) == 2
        # within the next 10 s, counted again; a stop writes what it counted
        for _ in range(2):
            assert show(env, key, headers={}).status == 401
        env.proxy.stop()
        assert "admin: 2 more 401s in the 10 s" in env.proxy.error_log()


def test_keys_admin_is_off_without_admin_token_file():
    with keys_env(token=None) as env:
        key = new_key()
        assert env.post(key=key).status == 201
        for method in ("GET", "DELETE"):
            r = admin(env, method, key)
            assert r.status == 404 and r.body == b"not found\n", r
        assert admin(env, "POST", key, suffix="/release").status == 404
        assert request(env.admin_port, "GET", "/healthz").status == 200
        assert request(env.admin_port, "GET", "/readyz").status == 200
        assert env.redis.keys("idem:*") != []


def test_keys_admin_answers_503_when_redis_is_unreachable():
    with keys_env(expect_errors=True) as env:
        key = new_key()
        assert env.post(key=key).status == 201
        env.redis.stop()
        r = show(env, key)
        assert_problem(r, 503, "store-unavailable")
        assert r.header("Retry-After") == "1", r
        env.redis.start()
        wait_until(lambda: show(env, key).status == 404, 5 * SLOW,
                   what="the admin API back once Redis is")  # not persistent: the key is gone


# ---------------------------------------------------------------- store kinds


def test_keys_admin_follows_a_reload_to_another_redis():
    """The admin's own store moves with the configuration: after a SIGHUP
    that names another Redis, the API reads and deletes keys there."""
    with keys_env() as env:
        old = new_key()
        assert env.post(key=old).status == 201
        assert show(env, old).json()["state"] == "done"
        os.makedirs(os.path.join(env.tmp, "other"))
        other = Redis(tmpdir=os.path.join(env.tmp, "other"))
        try:
            env.proxy.write_config(env.proxy.extra_config + f"\nredis 127.0.0.1:{other.port}")
            env.proxy.signal(signal.SIGHUP)
            wait_until(lambda: "reload complete" in env.proxy.error_log(), 5 * SLOW,
                       what="the reload")
            key = new_key()
            assert env.post(key=key).status == 201
            assert other.keys("idem:*") == [f"idem:-:{key}"]
            assert show(env, key).json()["state"] == "done"
            assert_problem(show(env, old), 404, "not-found")
            assert delete(env, key).status == 200 and other.keys("idem:*") == []
            assert env.redis.keys("idem:*") == [f"idem:-:{old}"]
            env.proxy.stop()  # before its Redis goes
        finally:
            other.close()


def test_keys_admin_through_redis_sentinel():
    """With redis_sentinel the admin's store asks the sentinel for the
    primary, as the workers' do (one sentinel that knows it at once)."""
    with Env(proxy=False) as env:
        sentinel = Sentinel(os.path.join(env.tmp, "s0"), "mymaster", env.redis.port)
        try:
            env.admin_port = free_port()
            token_path = os.path.join(env.tmp, "admin.token")
            with open(token_path, "w") as f:
                f.write(TOKEN)
            os.chmod(token_path, 0o600)
            env.start_proxy(f"redis_sentinel mymaster 127.0.0.1:{sentinel.port}\n"
                            f"admin_listen 127.0.0.1:{env.admin_port}\n"
                            f"admin_token_file {token_path}")
            key = new_key()
            wait_until(lambda: env.post(key=key).status == 201, 5 * SLOW,
                       what="a request through the sentinel's primary")
            j = show(env, key).json()
            assert j["state"] == "done" and j["status"] == 201, j
            assert delete(env, key).json()["action"] == "deleted"
            assert env.redis.keys("idem:*") == []
            env.proxy.stop()
        finally:
            sentinel.stop()


def test_keys_admin_call_waiting_for_redis_at_shutdown():
    """SIGTERM while a call waits for a frozen Redis: the process exits 0,
    with no sanitizer report (the waiting call is let go, not leaked), and
    the caller's connection closes unanswered."""
    with keys_env("redis_timeout 5s", expect_errors=True) as env:
        assert show(env, new_key()).status == 404  # the admin store is connected
        env.redis.proc.send_signal(signal.SIGSTOP)
        try:
            job = background(show, env, new_key())
            time.sleep(0.3 * SLOW)  # the call reaches the proxy and waits for Redis
            assert env.proxy.stop() == 0
        finally:
            env.redis.proc.send_signal(signal.SIGCONT)
        try:
            r = job.result(5)
        except Exception as e:  # noqa: BLE001 - what the caller sees
            r = e
        assert isinstance(r, (ConnectionError, OSError)), r
