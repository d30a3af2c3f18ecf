"""End-to-end tests of the admin listener (SPEC §3 admin_listen, §4.5):
/healthz, /readyz and /metrics on their own port.

Each test starts its own redis-server, test upstream and idemproxy (harness.Env)
with admin_listen on a free port.
"""

import re
import socket
import uuid

from harness import SLOW, Env, Proxy, free_port, raw, request, run_idemproxy, wait_until

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# One sample line of the text format: name, optional {labels}, value.
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"'
SAMPLE_RE = re.compile(rf"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{{{LABEL}(?:,{LABEL})*\}})? (\S+)$")


def new_key():
    return "k-" + uuid.uuid4().hex


def admin_env(extra="", **kwargs):
    port = free_port()
    config = f"admin_listen 127.0.0.1:{port}"
    if extra:
        config += "\n" + extra
    env = Env(extra_config=config, **kwargs)
    env.admin_port = port
    return env


def admin(env, path, method="GET"):
    return request(env.admin_port, method, path)


def wait_admin(env, path, status, timeout=10.0):
    """Polls path on the admin port until it answers status; returns the answer."""
    def check():
        r = admin(env, path)
        return r if r.status == status else None
    return wait_until(check, timeout * SLOW, interval=0.1, what=f"{path} to answer {status}")


def scrape(env):
    """GET /metrics, checked for format; returns {series: value}, where series
    is the sample as written before the value ('name' or 'name{labels}')."""
    r = admin(env, "/metrics")
    assert r.status == 200, r
    assert r.header("Content-Type") == METRICS_TYPE, r
    text = r.body.decode("utf-8")
    assert text.endswith("\n"), text[-200:]
    typed = {}
    samples = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("counter", "gauge", "histogram"), line
            typed[name] = kind
            continue
        m = SAMPLE_RE.match(line)
        assert m, f"not a sample line: {line!r}"
        name = m.group(1)
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in typed or family in typed, f"sample before its # TYPE: {line!r}"
        float(m.group(3))
        samples[name + (m.group(2) or "")] = float(m.group(3))
    return samples


def requests_total(route, outcome, code):
    return f'idemproxy_requests_total{{route="{route}",outcome="{outcome}",code="{code}"}}'


# ---------------------------------------------------------------- probes


def test_admin_healthz():
    with admin_env() as env:
        r = admin(env, "/healthz")
        assert r.status == 200 and r.body == b"ok\n", r
        h = admin(env, "/healthz", method="HEAD")
        assert h.status == 200 and h.body == b"", h
        # Admin requests are not access-logged: only the proxied one is.
        assert env.post("/orders", key=new_key()).status == 201
        admin(env, "/metrics")
        log = env.proxy.wait_access_log(1)
        assert len(log) == 1 and log[0]["path"] == "/orders", log


def test_admin_listen_changed_by_a_reload_is_said_to_wait_for_a_restart():
    """The admin listener is bound once: a reload that moves it (or turns it
    off) says so, and the listener stays where it was."""
    with admin_env() as env:
        moved = free_port()
        env.proxy.write_config(f"admin_listen 127.0.0.1:{moved}")
        env.proxy.signal(__import__("signal").SIGHUP)
        wait_until(lambda: "reload complete" in env.proxy.error_log(), 5 * SLOW,
                   what="the reload")
        assert ("reload: admin_listen changed; the admin listener stays as it is until the "
                "next restart") in env.proxy.error_log()
        assert admin(env, "/healthz").status == 200


def test_admin_readyz_follows_redis():
    with admin_env(expect_errors=True) as env:
        r = wait_admin(env, "/readyz", 200)
        assert r.body == b"ready\n", r
        env.redis.stop()
        r = wait_admin(env, "/readyz", 503)
        assert r.body == b"redis unreachable\n", r
        assert scrape(env)["idemproxy_redis_up"] == 0
        assert admin(env, "/healthz").status == 200, "healthz depends on redis"
        env.redis.start()
        r = wait_admin(env, "/readyz", 200)
        assert r.body == b"ready\n", r
        assert scrape(env)["idemproxy_redis_up"] == 1


def test_admin_unknown_path_is_404():
    with admin_env() as env:
        for path in ("/", "/nope", "/metrics/extra", "/healthzz", "/orders"):
            r = admin(env, path)
            assert r.status == 404, f"{path}: {r!r}"
        r = admin(env, "/healthz", method="POST")
        assert r.status == 405 and r.header("Allow") == "GET, HEAD", r
        assert env.upstream.count() == 0, "an admin request reached the upstream"


def test_admin_port_in_use_is_startup_failure():
    with Env(proxy=False) as env, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proxy = Proxy(env.upstream_port, env.redis_port, f"admin_listen 127.0.0.1:{port}",
                      tmpdir=env.tmp, start=False)
        code, _, _ = run_idemproxy(["-c", proxy.config_path])
        assert code == 2, f"exit {code}\n{proxy.error_log()}"
        assert f"admin_listen 127.0.0.1:{port}: cannot listen: Address already in use" in \
            proxy.error_log(), proxy.error_log()


# ---------------------------------------------------------------- metrics


def test_admin_metrics_after_miss_and_replay():
    with admin_env() as env:
        wait_admin(env, "/readyz", 200)
        key = new_key()
        first = env.post("/orders", key=key, body=b"{}")
        assert first.status == 201, first
        again = env.post("/orders", key=key, body=b"{}")
        assert again.status == 201, again
        assert env.upstream.count(key) == 1
        # Requests are counted where their access log line is written.
        env.proxy.wait_access_log(2)

        m = scrape(env)
        assert m.get(requests_total("default", "miss", "2xx")) == 1, m
        assert m.get(requests_total("default", "replay", "2xx")) == 1, m
        assert m["idemproxy_upstream_duration_seconds_count"] >= 1, m
        assert m['idemproxy_upstream_duration_seconds_bucket{le="+Inf"}'] == \
            m["idemproxy_upstream_duration_seconds_count"]
        assert m["idemproxy_redis_duration_seconds_count"] >= 2, m
        assert m['idemproxy_redis_duration_seconds_bucket{le="+Inf"}'] == \
            m["idemproxy_redis_duration_seconds_count"]
        assert m["idemproxy_redis_errors_total"] == 0, m
        assert "idemproxy_open_connections" in m, m
        assert m["idemproxy_inflight_requests"] == 0, m
        assert m["idemproxy_parked_requests"] == 0, m
        assert m["idemproxy_redis_up"] == 1, m
        assert m["idemproxy_start_time_seconds"] > 1e9, m

        # Buckets are cumulative.
        buckets = [(k, v) for k, v in m.items()
                   if k.startswith("idemproxy_upstream_duration_seconds_bucket")]
        assert len(buckets) == 13, buckets
        values = [v for _, v in buckets]
        assert values == sorted(values), buckets


def test_admin_metrics_route_label():
    with admin_env("route /pay { ttl 1h }") as env:
        assert env.post("/pay/x", key=new_key()).status == 201
        assert env.post("/orders", key=new_key()).status == 201
        log = env.proxy.wait_access_log(2)
        routes = [(e["path"], e["route"]) for e in log]
        assert routes == [("/pay/x", "/pay"), ("/orders", None)], log
        m = scrape(env)
        assert m.get(requests_total("/pay", "miss", "2xx")) == 1, m
        assert m.get(requests_total("default", "miss", "2xx")) == 1, m


def test_head_on_the_admin_listener_has_no_body_and_keeps_the_connection_in_step():
    """libevent's evhttp wrote a body after HEAD: a keep-alive client read it
    as the start of its next answer."""
    with admin_env() as env:
        port = env.admin_port
        wait_admin(env, "/healthz", 200)
        data = raw(port, b"HEAD /metrics HTTP/1.1\r\nHost: a\r\n\r\n"
                         b"HEAD /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
                         b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        heads = data.split(b"\r\n\r\n")
        assert len(heads) == 4 and heads[-1] == b"ok\n", data[:600]
        assert all(h.startswith(b"HTTP/1.1 200") for h in heads[:3]), data[:600]
        assert re.search(rb"Content-Length: [1-9]\d*", heads[0]), heads[0]


def test_redis_out_of_memory_turns_readyz_to_503_with_a_metric_and_a_warn_line():
    with admin_env() as env:
        wait_admin(env, "/readyz", 200)
        env.redis.cmd("CONFIG", "SET", "maxmemory-policy", "noeviction")
        env.redis.cmd("CONFIG", "SET", "maxmemory", "1")  # anything: Redis is over it at once
        r = env.post("/orders", key=new_key())
        assert r.status == 503 and r.json()["code"] == "store-unavailable", r
        r = admin(env, "/readyz")
        assert r.status == 503 and b"out of memory" in r.body, r
        assert b"idemproxy_redis_refusing_writes 1" in admin(env, "/metrics").body
        assert "refusing writes (OOM" in env.proxy.error_log()
        assert env.upstream.count() == 0
        env.redis.cmd("CONFIG", "SET", "maxmemory", "0")


def test_redis_settings_that_can_lose_keys_are_warned_about_and_exposed():
    with admin_env() as env:
        wait_admin(env, "/readyz", 200)
        # the test Redis runs without persistence
        wait_until(lambda: "neither appendonly nor snapshots" in env.proxy.error_log(), 5 * SLOW,
                   what="the persistence warning")
        body = admin(env, "/metrics").body
        assert b"idemproxy_redis_may_lose_keys 1" in body, body[-800:]
        assert b"idemproxy_redis_may_evict_keys 0" in body
        # an evicting policy, and AOF on: said again at the next reload
        env.redis.cmd("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
        env.redis.cmd("CONFIG", "SET", "appendonly", "yes")
        env.proxy.signal(__import__("signal").SIGHUP)
        wait_until(lambda: "maxmemory-policy is allkeys-lru" in env.proxy.error_log(), 5 * SLOW,
                   what="the eviction warning")
        body = wait_until(lambda: (lambda b: b if b"idemproxy_redis_may_lose_keys 0" in b
                                   else None)(admin(env, "/metrics").body), 5 * SLOW,
                          what="persistence seen")
        assert b"idemproxy_redis_may_evict_keys 1" in body
