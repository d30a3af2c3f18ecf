"""Redis Cluster (SPEC §8, redis_cluster): keys spread over every primary by
slot, a resharding under traffic (MOVED and ASK followed, nothing executed
twice), a waiting duplicate woken across instances and shards, a primary
SIGKILLed and replaced by its replica, and the configuration refused where a
cluster cannot keep the promise (max_keys_per_scope).

Every test is @alone: a cluster is a handful of redis-server processes, and
each needs its port + 10000 free for the cluster bus.
"""
import os
import random
import signal
import subprocess
import tempfile
import threading
import time
import uuid

from harness import (SLOW, Env, Proxy, RedisCluster, alone, background, key_slot, problem,
                     request, retrying_client, run_idemproxy, wait_until)


def new_key():
    return "k-" + uuid.uuid4().hex


def rkey(key, prefix="idem:", scope="-"):
    """The Redis key of a record with redis_cluster (policy_record_key, tagged)."""
    return f"{prefix}{{{scope}:{key}}}"


def metric(port, name):
    """The value of one series of /metrics (name may carry its labels)."""
    for line in request(port, "GET", "/metrics").body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def replays(r, first):
    return r.status == first.status and r.header("Idempotent-Replayed") == "true" and \
        r.body == first.body


@alone
def test_keys_spread_over_every_primary_and_replay():
    """Keys land on the primary of their slot (every primary gets some, and
    the record is there under its hash-tagged name); each replays; a
    one-time token and its key share a slot, so the claim script that
    consumes it runs; the upstream executed each once."""
    admin_port = None
    with Env(proxy=False, redis=False, extra_config="") as env:
        cluster = RedisCluster(os.path.join(env.tmp, "cluster"))
        try:
            from harness import free_port
            admin_port = free_port()
            proxy = env.start_proxy(f"{cluster.directive(1)}\nadmin_listen 127.0.0.1:{admin_port}\n"
                                    "token_endpoint /idem/token\n"
                                    "route /forms { require_token on }")
            wait_until(lambda: request(admin_port, "GET", "/readyz").status == 200, 10 * SLOW,
                       what="/readyz 200 with the slot map loaded")
            keys = [new_key() for _ in range(60)]
            firsts = {}
            for k in keys:
                r = env.post("/orders", key=k, body=b'{"k":"%s"}' % k.encode())
                assert r.status == 201 and r.header("Idempotent-Replayed") is None, r
                firsts[k] = r
            for k in keys:
                r = env.post("/orders", key=k, body=b'{"k":"%s"}' % k.encode())
                assert replays(r, firsts[k]), (k, r)
                assert env.upstream.count(k) == 1
            counts = {p.port: p.cmd("DBSIZE") for p in cluster.primaries()}
            assert len(counts) == 3 and all(c > 0 for c in counts.values()), counts
            assert sum(counts.values()) == len(keys), counts
            for k in keys[:10]:
                owner = cluster.owner(key_slot(rkey(k)))
                assert owner.key_state(rkey(k))["state"] == "done", k
            # a one-time token: consumed and claimed in one script, on one slot
            t = env.request("POST", "/idem/token")
            assert t.status == 201, t
            token = t.json()["token"]
            assert cluster.get(f"idem:token:{{-:{token}}}") == b"1"
            h = {"Idempotency-Token": token}
            r1 = env.post("/forms", body=b"hi", headers=h)
            assert r1.status == 201 and r1.header("Idempotent-Replayed") is None, r1
            r2 = env.post("/forms", body=b"hi", headers=h)
            assert replays(r2, r1), r2
            assert cluster.get(f"idem:token:{{-:{token}}}") is None
            assert cluster.owner(key_slot(rkey(token))).key_state(rkey(token))["state"] == "done"
            assert "redis cluster: slot map from 127.0.0.1:" in proxy.error_log()
            proxy.stop()
        finally:
            cluster.close()


def test_cluster_configuration_errors():
    with tempfile.TemporaryDirectory() as d:
        cases = {
            "two.conf": ("upstream http://127.0.0.1:9\nredis 127.0.0.1:6379\n"
                         "redis_cluster 127.0.0.1:7000 127.0.0.1:7001\n",
                         "two.conf:3: redis_cluster: the store is named twice (redis, line 2)"),
            "three.conf": ("upstream http://127.0.0.1:9\nredis_cluster 127.0.0.1:7000\n"
                           "redis_sentinel m 127.0.0.1:26379\n",
                           "three.conf:3: redis_sentinel: the store is named twice "
                           "(redis_cluster, line 2)"),
            "quota.conf": ("upstream http://127.0.0.1:9\nmax_keys_per_scope 100\n"
                           "redis_cluster 127.0.0.1:7000\n",
                           "quota.conf:2: max_keys_per_scope: not supported with redis_cluster "
                           "(line 3)"),
            "db.conf": ("upstream http://127.0.0.1:9\nredis_cluster 127.0.0.1:7000\nredis_db 2\n",
                        "db.conf:3: redis_db: a Redis Cluster has database 0 only"),
            "prefix.conf": ("upstream http://127.0.0.1:9\nredis_cluster 127.0.0.1:7000\n"
                            "key_prefix \"idem{x}:\"\n",
                            "prefix.conf:3: key_prefix: no '{' or '}' with redis_cluster"),
            "addr.conf": ("upstream http://127.0.0.1:9\nredis_cluster 127.0.0.1\n",
                          "addr.conf:2: redis_cluster: expected HOST:PORT"),
        }
        for name, (text, want) in cases.items():
            path = os.path.join(d, name)
            with open(path, "w") as f:
                f.write(text)
            code, _, err = run_idemproxy(["-t", "-c", path])
            assert code != 0, name
            assert f"{d}/{want}" in err, (name, err)
        ok = os.path.join(d, "ok.conf")
        with open(ok, "w") as f:
            f.write("upstream http://127.0.0.1:9\nredis_cluster 127.0.0.1:7000 localhost:7001\n")
        code, _, err = run_idemproxy(["-t", "-c", ok])
        assert code == 0, err
