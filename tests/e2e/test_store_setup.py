"""Crashes and reloads must never cost the promise (issue: refused Redis
set-up, reloads, truncated bodies). A crash strands every key in flight, so
each test here asserts the process stays up, answers what SPEC §4.1 says,
and that nothing executes twice or in the wrong Redis database.
"""
import os
import signal
import socket
import threading
import time

from harness import alone, SANITIZE, SLOW, Env, ScriptedUpstream, assert_problem, background, wait_until


def _hammer(env, seconds, threads=16, prefix="h"):
    """threads clients posting fresh keys for `seconds`; returns the statuses."""
    statuses = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def run(t):
        i = 0
        while time.monotonic() < stop:
            try:
                r = env.post("/orders", key=f"{prefix}-{t}-{i}", timeout=5)
                code = r.status
            except OSError:
                code = "conn"
            with lock:
                statuses.append(code)
            i += 1

    ts = [threading.Thread(target=run, args=(t,), daemon=True) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(seconds + 30)
    return statuses


@alone
def test_a_refused_select_under_load_is_503_and_never_crashes():
    with Env(extra_config="redis_db 99\nworkers 2", expect_errors=True) as env:
        statuses = _hammer(env, 4 if not SANITIZE else 3)
        assert env.proxy.running(), "idemproxy died"
        assert statuses and set(statuses) == {503}, sorted(set(map(str, statuses)))
        assert env.upstream.count() == 0
        # nothing ran in database 0 either
        assert env.redis.keys("*") == []
        assert "setup refused" in env.proxy.error_log()


@alone
def test_a_refused_password_under_load_is_503_and_never_crashes():
    with Env(proxy=False) as env:
        env.redis.cmd("CONFIG", "SET", "requirepass", "right")
        pw = os.path.join(env.tmp, "pw")
        with open(pw, "w") as f:
            f.write("wrong\n")
        os.chmod(pw, 0o600)
        env.start_proxy(f"redis_password_file {pw}\nworkers 2", expect_errors=True)
        statuses = _hammer(env, 4 if not SANITIZE else 3)
        assert env.proxy.running(), "idemproxy died"
        assert statuses and set(statuses) == {503}, sorted(set(map(str, statuses)))
        assert env.upstream.count() == 0


class _Blackhole:
    """A listening port whose accept queue is full: SYNs to it are dropped, so
    a connect hangs; closing it makes the next SYN retransmission fail."""

    def __enter__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fillers = []
        for _ in range(4):  # backlog 0 still queues one or two: fill them
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            self.fillers.append(s)
        time.sleep(0.2)
        return self

    def close(self):
        for s in self.fillers:
            s.close()
        self.sock.close()

    def __exit__(self, *exc):
        self.close()


def test_a_reload_while_a_redis_connect_hangs_never_crashes():
    with _Blackhole() as hole, Env(proxy=False) as env:
        env.start_proxy(f"redis 127.0.0.1:{hole.port}\nredis_timeout 5s\nworkers 1",
                        expect_errors=True)
        time.sleep(0.3)  # the connect to the black hole is under way
        env.proxy.write_config(f"redis 127.0.0.1:{env.redis_port}\nworkers 1")
        env.proxy.signal(signal.SIGHUP)
        wait_until(lambda: "redis settings changed" in env.proxy.error_log(), 5 * SLOW,
                   what="the reload")
        # the retired attempt fails now (RST to its next SYN): it must not touch the new link
        hole.close()
        r = wait_until(lambda: (lambda r: r if r.status == 201 else None)(
            env.post("/orders", key="after-reload")), 10 * SLOW, what="a claim on the new Redis")
        time.sleep(3 * SLOW)  # SYN retransmissions: 1 s, then 3 s
        assert env.proxy.running(), "idemproxy died"
        assert env.post("/orders", key="after-reload").header("Idempotent-Replayed") == "true"
        assert env.upstream.count("after-reload") == 1


def test_a_redis_that_drops_syns_is_given_up_after_redis_timeout():
    with _Blackhole() as hole, Env(proxy=False) as env:
        env.start_proxy(f"redis 127.0.0.1:{hole.port}\nredis_timeout 300ms", expect_errors=True)
        t0 = time.monotonic()
        r = env.post("/orders", key="k1")
        assert r.status == 503, r
        assert time.monotonic() - t0 < 3 * SLOW
        wait_until(lambda: "not connected and set up within redis_timeout" in
                   env.proxy.error_log(), 5 * SLOW, what="the connect deadline")
        assert env.upstream.count() == 0


def test_a_close_delimited_answer_is_relayed_but_never_replayed_as_whole():
    for version in (b"HTTP/1.1", b"HTTP/1.0"):
        cut = version + b" 201 Created\r\nContent-Type: text/plain\r\n\r\nthe first half of"
        with ScriptedUpstream(cut, close_after=True) as up, Env(proxy=False) as env:
            env.upstream_port = up.port
            env.start_proxy()
            r = env.post("/orders", key="cd-1")
            assert r.status == 201 and r.body == b"the first half of", r
            r = env.post("/orders", key="cd-1")
            assert_problem(r, 409, "outcome-unknown")
            assert up.requests == 1
            # it surely executed: blocked as long as an answer would be kept (ttl)
            (rkey,) = env.redis.keys("idem:*")
            assert env.redis.cmd("PTTL", rkey) > 3600 * 1000, env.redis.cmd("PTTL", rkey)
            assert "ended its answer by closing the connection" in env.proxy.error_log()


def test_requests_in_flight_across_a_reload_of_redis_and_key_prefix_finish_where_they_began():
    from harness import Redis, background
    with Env(extra_config="key_prefix a:\non_inflight wait 10s\nworkers 1") as env:
        other = Redis(tmpdir=os.path.join(env.tmp))  # a second Redis, its own port
        try:
            slow = background(env.post, "/orders", key="k1", headers={"X-Test-Delay": "1500"})
            wait_until(lambda: env.redis.keys("a:*"), 3 * SLOW, what="the claim in Redis A")
            parked = background(env.post, "/orders", key="k1", timeout=20)
            wait_until(lambda: env.redis.key_state("a:-:k1")["waiting"], 3 * SLOW,
                       what="the duplicate parked")
            env.proxy.write_config(f"redis 127.0.0.1:{other.port}\nkey_prefix b:\n"
                                   "on_inflight wait 10s\nworkers 1")
            env.proxy.signal(signal.SIGHUP)
            wait_until(lambda: "redis settings changed" in env.proxy.error_log(), 5 * SLOW,
                       what="the reload")
            first = slow.result(10 * SLOW)
            assert first.status == 201, first
            # stored where it was claimed, and the parked duplicate was woken with it
            state = (env.redis.key_state("a:-:k1") or {}).get("state")
            assert state == "done", (state, env.redis.keys("*"))
            second = parked.result(15 * SLOW)
            assert second.status == 201 and second.header("Idempotent-Replayed") == "true", second
            assert env.upstream.count("k1") == 1
            # new requests use the new target
            assert env.post("/orders", key="k2").status == 201
            assert other.keys("b:*") and not env.redis.keys("b:*")
            assert "lease was lost" not in env.proxy.error_log()
            env.proxy.stop()  # before its Redis goes
        finally:
            other.close()


def _free_fd_limit(pid, free):
    """The RLIMIT_NOFILE at which exactly `free` descriptor numbers are still
    open to pid (the kernel hands out the lowest free number below it)."""
    used = {int(n) for n in os.listdir(f"/proc/{pid}/fd")}
    limit, free_below = 0, 0
    while free_below < free or limit in used:
        if limit not in used:
            free_below += 1
        limit += 1
    return limit


def _replay_headers(env, key, n=16):
    """The replay header names seen on n replays, each on a fresh connection
    (so both workers answer some)."""
    names = set()
    for _ in range(n):
        r = env.post("/orders", key=key)
        names.update(k for k, v in r.headers if v == "true" and k.lower().endswith("replayed"))
    return names


def test_a_reload_that_one_worker_cannot_prepare_changes_no_worker():
    import resource
    from harness import free_port, port_open
    with Env(extra_config="workers 2", expect_errors=True) as env:
        assert env.post("/orders", key="r1").status == 201
        assert _replay_headers(env, "r1") == {"Idempotent-Replayed"}
        new_port = free_port()
        env.proxy.write_config(f"workers 2\nlisten 127.0.0.1:{env.proxy.port}\n"
                               f"listen 127.0.0.1:{new_port}\nreplay_header X-New-Replayed")
        pid = env.proxy.pid
        time.sleep(0.5)  # the replays' connections are closed
        # Room for main's new socket and its copies for both workers (5) and
        # one more: the first worker to prepare cannot copy both sockets for
        # its listeners; it lets its inputs go, and then the other one can.
        old = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (_free_fd_limit(pid, 6), old[1]))
        env.proxy.signal(signal.SIGHUP)
        wait_until(lambda: "reload failed" in env.proxy.error_log(), 5 * SLOW,
                   what="the failed reload")
        resource.prlimit(pid, resource.RLIMIT_NOFILE, old)
        log = env.proxy.error_log()
        assert "cannot listen" in log and "reload complete" not in log, log[-2000:]
        time.sleep(0.3)
        assert _replay_headers(env, "r1") == {"Idempotent-Replayed"}, "a worker took the reload"
        assert not port_open(new_port)
        # with room again, the same file reloads everywhere
        env.proxy.signal(signal.SIGHUP)
        wait_until(lambda: "reload complete" in env.proxy.error_log(), 5 * SLOW,
                   what="the reload")
        time.sleep(0.3)
        assert _replay_headers(env, "r1") == {"X-New-Replayed"}
        assert port_open(new_port)
        assert env.upstream.count("r1") == 1


@alone
def test_soak_reloads_and_redis_restarts_under_load_never_crash_or_execute_twice():
    """Reloads every 200 ms, alternating good and bad files that move the
    Redis target, the key prefix and the upstream list, while 8 clients post
    fresh keys and one Redis restarts now and then. Run under ASan+UBSan by
    `make test SANITIZE=1`: the harness fails on any sanitizer report."""
    from harness import Redis
    seconds = 8
    with Env(extra_config="workers 2", expect_errors=True) as env:
        other = Redis(tmpdir=env.tmp)
        up = env.upstream.port
        configs = [
            f"workers 2\nkey_prefix p1:\nupstream http://127.0.0.1:{up}",
            "workers 2\nthis is not a directive",
            f"workers 2\nredis 127.0.0.1:{other.port}\nkey_prefix p2:\n"
            f"upstream http://127.0.0.1:{up} http://localhost:{up}",
            f"workers 2\nredis 127.0.0.1:{other.port}\nupstream http://no-such-host.invalid:1",
            f"workers 2\nkey_prefix p1:\nredis_db 1\nupstream http://127.0.0.1:{up}",
        ]
        stop = time.monotonic() + seconds
        sent, lock = [], threading.Lock()

        def client(t):
            i = 0
            while time.monotonic() < stop:
                key = f"soak-{t}-{i}"
                try:
                    env.post("/orders", key=key, timeout=5)
                    with lock:
                        sent.append(key)
                except OSError:
                    pass
                i += 1

        def restarts():
            while time.monotonic() < stop - 1:
                time.sleep(1.5)
                other.stop()
                time.sleep(0.3)
                other.start()

        threads = [threading.Thread(target=client, args=(t,), daemon=True) for t in range(8)]
        threads.append(threading.Thread(target=restarts, daemon=True))
        for t in threads:
            t.start()
        n = 0
        try:
            while time.monotonic() < stop:
                env.proxy.write_config(configs[n % len(configs)])
                env.proxy.signal(signal.SIGHUP)
                n += 1
                time.sleep(0.2)
            for t in threads:
                t.join(30)
            assert env.proxy.running(), "idemproxy died"
            # every request was sent once: none may have run twice
            for key in sent[:: max(1, len(sent) // 200)]:
                assert env.upstream.count(key) <= 1, key
            assert n > 20 and len(sent) > 50, (n, len(sent))
            log = env.proxy.error_log()
            assert "reload complete" in log and "reload failed" in log
            env.proxy.stop()  # before its second Redis goes; checks sanitizer output
        finally:
            other.close()


def test_a_redis_that_wants_a_password_we_do_not_have_is_said_at_once():
    """NOAUTH comes as the answer to the set-up's PING: it must be reported
    as what it is, not waited out until redis_timeout."""
    with Env(proxy=False) as env:
        env.redis.cmd("CONFIG", "SET", "requirepass", "s3cret")
        env.start_proxy("redis_timeout 5s", expect_errors=True)
        t0 = time.monotonic()
        r = env.post("/orders", key="k1")
        assert r.status == 503 and time.monotonic() - t0 < 2 * SLOW, r
        wait_until(lambda: "setup refused" in env.proxy.error_log() and
                   "NOAUTH" in env.proxy.error_log(), 3 * SLOW, what="the NOAUTH line")
        assert env.upstream.count() == 0


def test_a_redis_stall_at_completion_is_ridden_out_while_the_lease_lasts():
    """Redis paused for 2 s as the answer is stored: the completion timed
    out, was never sent again, the key lapsed with its lease, and the retry
    executed a second time. Found by an attack run."""
    with Env(extra_config="lock_ttl 4s\nupstream_timeout 2s\nworkers 1",
             expect_errors=True) as env:
        first = background(env.post, "/orders", key="stall",
                           headers={"X-Test-Delay": "500"})
        wait_until(lambda: env.upstream.count("stall") == 1, 5 * SLOW, what="the claim made")
        # the completion, sent at ~0.5 s, waits past redis_timeout (1 s)
        env.redis.cmd("CLIENT", "PAUSE", "2500", "ALL")
        r = first.result(10 * SLOW)
        assert r.status == 201, r
        wait_until(lambda: "storing the response failed" in env.proxy.error_log(),
                   5 * SLOW, what="the retried completion")
        time.sleep(4.5)  # past the lease: only a stored answer protects the key now
        again = env.post("/orders", key="stall", headers={"X-Test-Delay": "500"})
        assert again.status == 201 and again.header("Idempotent-Replayed") == "true", again
        assert env.upstream.count("stall") == 1


def test_redis_pointed_at_something_that_is_not_redis_is_503_and_never_crashes():
    """`redis` names an HTTP server by mistake: its answer is no RESP. The
    connection is dropped with a line that says so, keyed requests get 503,
    and the process stays up (a reply the reader refuses once freed the
    connection twice)."""
    with Env(proxy=False, expect_errors=True) as env:
        proxy = env.start_proxy(f"redis 127.0.0.1:{env.upstream_port}")
        for _ in range(3):
            assert_problem(env.post("/orders", key="not-redis"), 503, "store-unavailable")
        wait_until(lambda: "protocol error in a Redis reply" in proxy.error_log(), 3 * SLOW,
                   what="the reason in the error log")
        assert proxy.running()
        assert env.upstream.count("not-redis") == 0
