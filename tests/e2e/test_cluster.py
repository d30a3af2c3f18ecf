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
import subprocess
import tempfile
import threading
import time
import uuid

from harness import (SLOW, Env, Proxy, Redis, RedisCluster, alone, assert_problem, background,
                     cluster_port, failover_config, free_port, key_slot, recording_client, request,
                     retrying_client, run_idemproxy, wait_until)


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


def served_once(env, keys, executions=1):
    """Each key answers 201, executed for the executions-th time, and replays."""
    for k in keys:
        r = env.post("/orders", key=k)
        assert r.status == 201, (k, r)
        assert replays(env.post("/orders", key=k), r)
        assert env.upstream.count(k) == executions, k


def start_ready(env, config):
    """idemproxy on config plus an admin listener, once /readyz says 200 (the
    slot map loaded, every primary connected); returns the admin port."""
    admin = free_port()
    env.start_proxy(f"{config}\nadmin_listen 127.0.0.1:{admin}")
    wait_until(lambda: request(admin, "GET", "/readyz").status == 200, 10 * SLOW,
               what="/readyz 200")
    return admin


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
            admin_port = free_port()
            token_path = os.path.join(env.tmp, "admin.token")
            with open(os.open(token_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                f.write("cluster-admin-token\n")
            proxy = env.start_proxy(f"{cluster.directive(1)}\nadmin_listen 127.0.0.1:{admin_port}\n"
                                    f"admin_token_file {token_path}\n"
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
            # the keys admin API finds a key on its shard and frees it there
            auth = {"Authorization": "Bearer cluster-admin-token"}
            shown = request(admin_port, "GET", f"/keys/{keys[0]}", auth)
            assert shown.status == 200 and shown.json()["state"] == "done", shown
            assert shown.json()["redis_key"] == rkey(keys[0]), shown.json()
            assert request(admin_port, "DELETE", f"/keys/{keys[0]}", auth).status == 200
            assert cluster.owner(key_slot(rkey(keys[0]))).key_state(rkey(keys[0])) is None
            assert env.post("/orders", key=keys[0], body=b'{"k":"x"}').status == 201
            assert env.upstream.count(keys[0]) == 2
            proxy.stop()
        finally:
            stop_all(env, None, cluster)


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


def keys_on_and_off(cluster, primary, n=30):
    """n new keys, and which of them land on primary's slots and which not
    (both non-empty)."""
    keys = [new_key() for _ in range(n)]
    on = [k for k in keys if cluster.owner(key_slot(rkey(k))).port == primary.port]
    off = [k for k in keys if k not in on]
    assert on and off
    return keys, on, off


def keys_on_every_primary(cluster, each, avoid_slot=None):
    """New keys, `each` of them on every primary's slots (random keys left a
    shard out now and then: 12 of them miss one of 3 shards 2% of the time);
    none in avoid_slot or in a slot without a primary."""
    ranges = cluster.slot_map()
    per_port = {port: [] for port in ranges.values()}
    while any(len(ks) < each for ks in per_port.values()):
        k = new_key()
        slot = key_slot(rkey(k))
        port = next((p for (first, last), p in ranges.items() if first <= slot <= last), None)
        if slot != avoid_slot and port is not None and len(per_port[port]) < each:
            per_port[port].append(k)
    return [k for ks in per_port.values() for k in ks]


def key_in_slot(slot, avoid=()):
    """A new idempotency key whose record lands in slot."""
    while True:
        k = new_key()
        if key_slot(rkey(k)) == slot and k not in avoid:
            return k


def start_clients(proxies, stats, lock, stop, n, seed):
    rnd = random.Random(seed)
    threads = [threading.Thread(target=retrying_client,
                                args=(proxies, random.Random(rnd.random()), stop, stats, lock),
                                daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


def new_stats():
    return {"keys": [], "done": 0, "unknown": 0, "gave_up": 0, "different_body": 0,
            "replayed": 0}


def stop_all(env, b, cluster):
    """The instances first (their logs are checked), then the cluster."""
    for p in (b, env.proxy):
        if p is not None:
            p.close()
    cluster.close()


def second_instance(env, cfg, name="b"):
    d = os.path.join(env.tmp, name)
    os.makedirs(d, exist_ok=True)
    return Proxy(env.upstream_port, env.redis_port, cfg, tmpdir=d)


def move_a_slot_by_hand(env, cluster, admin):
    """An empty slot of the first primary migrated to the second by hand: a
    new key in it is claimed on the importing node after -ASK, and found
    there by -MOVED once the slot has moved; executed once. Returns (source,
    destination)."""
    src, dst = cluster.primaries()[:2]
    src_id, dst_id = cluster.node_id(src), cluster.node_id(dst)
    slot = next(s for s in range(16384) if cluster.owner(s) is src
                and src.cmd("CLUSTER", "COUNTKEYSINSLOT", s) == 0)
    dst.cmd("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    src.cmd("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    k = key_in_slot(slot)
    first = env.post("/orders", key=k)
    assert first.status == 201, first
    # claimed on the importing node (the source never had it)
    assert dst.cmd("CLUSTER", "COUNTKEYSINSLOT", slot) == 1
    assert src.cmd("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    assert metric(admin, 'idemproxy_redis_redirections_total{kind="ask"}') >= 1
    for node in (dst, src):
        node.cmd("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    r = env.post("/orders", key=k)
    assert replays(r, first), r
    assert metric(admin, 'idemproxy_redis_redirections_total{kind="moved"}') >= 1
    assert env.upstream.count(k) == 1
    return src, dst


@alone
def test_nodes_named_by_host_name_are_reached_at_their_address():
    """cluster-preferred-endpoint-type hostname: CLUSTER SLOTS and the
    redirections name every node "localhost"; idemproxy connects to the
    address of each node's metadata (it never resolves a name on its loop)
    and follows -ASK and -MOVED by name: keys spread over every primary and
    replay, a slot moved by hand is followed, each key executed once."""
    with Env(proxy=False, redis=False) as env:
        cluster = RedisCluster(os.path.join(env.tmp, "cluster"), hostname="localhost")
        try:
            admin = start_ready(env, cluster.directive())
            assert cluster.primaries()[0].cmd("CLUSTER", "SLOTS")[0][2][0] == b"localhost"
            keys = keys_on_every_primary(cluster, 10)
            firsts = {k: env.post("/orders", key=k) for k in keys}
            assert all(r.status == 201 for r in firsts.values()), firsts
            for k in keys:
                assert replays(env.post("/orders", key=k), firsts[k]), k
                assert env.upstream.count(k) == 1
            move_a_slot_by_hand(env, cluster, admin)
            assert "not a numeric address" not in env.proxy.error_log()
        finally:
            stop_all(env, None, cluster)


@alone
def test_resharding_under_traffic_executes_nothing_twice():
    """A slot migrated by hand (a new key in it is claimed on the importing
    node after -ASK, and found there by -MOVED once the slot has moved), then
    2000 slots resharded by redis-cli while retrying clients send keyed POSTs
    through two instances: every key answered 201 replays, none executed
    twice, and /metrics counts both kinds of redirection."""
    admin = free_port()
    with Env(proxy=False, redis=False) as env:
        cluster = RedisCluster(os.path.join(env.tmp, "cluster"))
        b = None
        try:
            cfg = f"{cluster.directive()}\nadmin_listen 127.0.0.1:{admin}\nlock_ttl 20s\n" \
                  "upstream_timeout 10s"
            env.start_proxy(cfg)
            b = second_instance(env, cluster.directive())
            wait_until(lambda: request(admin, "GET", "/readyz").status == 200, 10 * SLOW,
                       what="/readyz 200")
            src, dst = move_a_slot_by_hand(env, cluster, admin)
            src_id, dst_id = cluster.node_id(src), cluster.node_id(dst)

            stats, lock, stop = new_stats(), threading.Lock(), threading.Event()
            owned_by_src = {s for s in range(16384) if cluster.owner(s) is src}
            threads = start_clients([env.proxy, b], stats, lock, stop, 6, 14)
            time.sleep(1.0)
            t0 = time.monotonic()
            moved_before = metric(admin, 'idemproxy_redis_redirections_total{kind="moved"}')
            ask_before = metric(admin, 'idemproxy_redis_redirections_total{kind="ask"}')
            out = subprocess.run(["redis-cli", "--cluster", "reshard", f"127.0.0.1:{src.port}",
                                  "--cluster-from", src_id, "--cluster-to", dst_id,
                                  "--cluster-slots", "2000", "--cluster-yes"],
                                 capture_output=True, timeout=60 * SLOW)
            assert out.returncode == 0, out.stdout.decode()[-2000:] + out.stderr.decode()
            reshard_s = time.monotonic() - t0
            time.sleep(1.0)
            stop.set()
            for t in threads:
                t.join(30 * SLOW)
            done = [k for k in stats["keys"]]
            twice = [k for k in done if env.upstream.count(k) > 1]
            assert not twice, f"executed twice: {twice[:10]}"
            assert stats["different_body"] == 0 and stats["done"] > 20, stats
            # the clients saw each 201 replayed; after the resharding, every key that
            # executed is still a stored answer, on the primary its slot has now
            answered = [k for k in done if env.upstream.count(k) == 1]
            lost = [k for k in answered
                    if (cluster.owner(key_slot(rkey(k))).key_state(rkey(k)) or {}).get("state")
                    != "done"]
            assert not lost, f"answered, but no stored answer after the resharding: {lost[:10]}"
            # and replays: a request of the same key with another body is told it differs
            for k in answered[:40]:
                r = b.request("POST", "/charges", {"Idempotency-Key": k}, b"{}")
                assert r.status == 422, (k, r)
            # A key of a slot that moved, through this instance: its map was
            # stale unless a redirection during the move refreshed it already,
            # so either way the counters grew (the clients spread their
            # traffic over both instances, and may have missed the slots)
            moved_slot = next(sl for sl in sorted(owned_by_src) if cluster.owner(sl) is dst)
            late = key_in_slot(moved_slot)
            assert env.post("/orders", key=late).status == 201
            assert dst.key_state(rkey(late))["state"] == "done"
            moved = metric(admin, 'idemproxy_redis_redirections_total{kind="moved"}')
            ask = metric(admin, 'idemproxy_redis_redirections_total{kind="ask"}')
            print(f"resharding ({reshard_s:.1f}s): {len(done)} keys, {stats['done']} done, "
                  f"moved {moved_before:.0f} -> {moved:.0f}, ask {ask_before:.0f} -> {ask:.0f}")
            assert moved + ask > moved_before + ask_before, "no redirection during the resharding"
            # a new key in a slot that moved: claimed, stored and replayed on its new primary
            moved_slot = next(s for s in sorted(owned_by_src) if cluster.owner(s) is dst)
            k = key_in_slot(moved_slot)
            first = b.request("POST", "/orders", {"Idempotency-Key": k}, b"{}")
            assert first.status == 201, first
            assert replays(env.post("/orders", key=k), first)
            assert dst.key_state(rkey(k))["state"] == "done"
        finally:
            stop_all(env, b, cluster)


def duplicate_woken(env, key, primary, send_duplicate):
    """key's first request (on env, its record on primary) held 1.5 s at the
    upstream; send_duplicate() meanwhile waits (on_inflight wait 8s) and is
    woken by the completion: the replay, long before its wait runs out."""
    first = background(env.post, "/orders", key=key, headers={"X-Test-Delay": "1500"},
                       timeout=15)
    wait_until(lambda: env.upstream.count(key) == 1, 5, what="the first at the upstream")
    t0 = time.monotonic()
    dup = background(send_duplicate)
    wait_until(lambda: primary.key_state(rkey(key))["waiting"], 5,
               what="the duplicate marked waiting")
    r1 = first.result(15)
    r2 = dup.result(15)
    elapsed = time.monotonic() - t0
    assert r1.status == 201 and replays(r2, r1), (r1, r2)
    assert elapsed < 4, f"the duplicate waited {elapsed:.1f}s: not woken"
    assert env.upstream.count(key) == 1


@alone
def test_waiting_duplicate_wakes_across_instances_and_shards():
    """on_inflight wait: a duplicate parked on instance B, whose pub/sub link
    is on another node than the key's primary, wakes when the first attempt
    completes on instance A (PUBLISH reaches every node over the cluster
    bus) and gets the replay long before its wait would have run out."""
    wait = "on_inflight wait 8s"
    with Env(proxy=False, redis=False) as env:
        cluster = RedisCluster(os.path.join(env.tmp, "cluster"))
        b = None
        try:
            env.start_proxy(f"{cluster.directive()}\n{wait}")
            sub_node = cluster.nodes[0]  # B's only seed: its pub/sub link is there
            b = second_instance(env, f"redis_cluster 127.0.0.1:{sub_node.port}\n{wait}")
            wait_until(lambda: "redis pubsub 127.0.0.1:%d: connected" % sub_node.port
                       in b.error_log(), 10 * SLOW, what="B's pub/sub link")
            other = next(p for p in cluster.primaries() if p is not sub_node)
            slot = next(s for s in range(16384) if cluster.owner(s) is other)
            key = key_in_slot(slot)
            duplicate_woken(env, key, other, lambda: b.request(
                "POST", "/orders", {"Idempotency-Key": key}, b"{}", timeout=15))
        finally:
            stop_all(env, b, cluster)


@alone
def test_primary_killed_replica_promoted_keeps_the_promise():
    """A primary SIGKILLed under retrying clients (redis_min_replicas 1, one
    replica per primary, cluster-node-timeout 1 s): the cluster promotes its
    replica, idemproxy follows the new slot map; meanwhile only 201, 503
    and 409 conflict are answered, nothing executes twice, a key stored on
    that shard before replays after, and /readyz is 200 again."""
    admin = free_port()
    with Env(proxy=False, redis=False, expect_errors=True) as env:
        cluster = RedisCluster(os.path.join(env.tmp, "cluster"), replicas=1)
        try:
            proxy = env.start_proxy(failover_config(cluster.directive(), admin))
            wait_until(lambda: request(admin, "GET", "/readyz").status == 200, 10 * SLOW,
                       what="/readyz 200")
            victim = cluster.primaries()[0]
            slot = next(s for s in range(16384) if cluster.owner(s) is victim)
            stored = key_in_slot(slot)
            before = env.post("/orders", key=stored, body=b'{"n":1}')
            assert before.status == 201, before

            statuses, keys, lock, stop = [], [], threading.Lock(), threading.Event()

            def client():
                recording_client(lambda k: env.post("/orders", key=k, timeout=5), new_key,
                                 statuses, keys, lock, stop, tries=300)

            threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
            for t in threads:
                t.start()
            time.sleep(0.5)
            victim.kill()
            wait_until(lambda: cluster.owner(slot) not in (None, victim), 20 * SLOW,
                       what="the replica promoted")
            new_primary = cluster.owner(slot)
            victim.start()  # back, as a replica of the new primary: claims have a replica again
            wait_until(lambda: b"state=online" in new_primary.cmd("INFO", "replication"),
                       20 * SLOW, what="the old primary in sync as the new one's replica")
            wait_until(lambda: env.post("/orders", key=key_in_slot(slot)).status == 201,
                       15 * SLOW, what="new keys on that shard executing again")
            wait_until(lambda: request(admin, "GET", "/readyz").status == 200, 15 * SLOW,
                       what="/readyz 200 on the new map")
            time.sleep(0.5)
            stop.set()
            for t in threads:
                t.join(30)
            unexpected = [c for c in statuses if c not in (201, 503, "conflict")]
            assert not unexpected, f"answers other than 201/503/409 conflict: {unexpected[:20]}"
            twice = [k for k in keys if env.upstream.count(k) > 1]
            assert not twice, f"executed twice: {twice}"
            assert 503 in statuses, "the failover window was not seen"
            r = env.post("/orders", key=stored, body=b'{"n":1}')
            assert replays(r, before), r
            assert "redis cluster:" in proxy.error_log() and "changed primary" in proxy.error_log()
            proxy.stop()
        finally:
            stop_all(env, None, cluster)


@alone
def test_a_primary_gone_for_good_is_forgotten_and_its_shard_served():
    """A primary killed for good, its replica promoted, the old node never
    back (as when a pod returns at another address): once its link has
    nothing left to do, its place in the node table is freed for the next
    new node (logged at debug), and keys on every shard, that one included,
    execute once and replay. One slot has no primary meanwhile
    (cluster-require-full-coverage no): a map not whole is no reason to
    keep dialling a node that left (it was, and the node was kept)."""
    with Env(proxy=False, redis=False, expect_errors=True) as env:
        cluster = RedisCluster(os.path.join(env.tmp, "cluster"), replicas=1)
        try:
            seed = cluster.nodes[0]  # the only seed: seeds are never forgotten
            start_ready(env, cluster.directive(1) + "\nworkers 2\nlog_level debug")
            victim = next(p for p in cluster.primaries() if p.port != seed.port)
            slot = next(s for s in range(16384) if cluster.owner(s) is victim)
            hole = next(s for s in range(16384) if cluster.owner(s) is seed)
            for n in cluster.nodes:
                n.cmd("CONFIG", "SET", "cluster-require-full-coverage", "no")
                n.cmd("CLUSTER", "DELSLOTS", str(hole))
            stored = key_in_slot(slot)
            first = env.post("/orders", key=stored)
            assert first.status == 201, first
            victim.kill()
            wait_until(lambda: cluster.owner(slot) not in (None, victim), 20 * SLOW,
                       what="the replica promoted")
            wait_until(lambda: env.post("/orders", key=key_in_slot(slot)).status == 201,
                       15 * SLOW, what="the shard executing again")
            forgotten = f"127.0.0.1:{victim.port} owns no slot and is idle: forgotten"
            wait_until(lambda: env.proxy.error_log().count(forgotten) == 2, 15 * SLOW,
                       what="the old primary forgotten by both workers")
            # and no longer dialled (it was, once per redis_timeout, for good)
            refused = f"redis 127.0.0.1:{victim.port}: Connection refused"
            tries = env.proxy.error_log().count(refused)
            time.sleep(2.5)
            assert env.proxy.error_log().count(refused) == tries
            keys = keys_on_every_primary(cluster, 10, avoid_slot=hole)
            served_once(env, keys)
            assert replays(env.post("/orders", key=stored), first)
            orphan = key_in_slot(hole)  # a slot without a primary: nothing executes
            assert env.post("/orders", key=orphan).status == 503
            assert env.upstream.count(orphan) == 0
        finally:
            stop_all(env, None, cluster)


@alone
def test_cluster_over_tls_follows_the_slots_and_verifies_every_node():
    """Seeds and the nodes learned from CLUSTER SLOTS are reached over TLS and
    verified (their certificates name 127.0.0.1); keys land on every primary
    and replay. An instance without the CA reaches none of them: 503."""
    from certs import certs
    c = certs()
    tls = {"cert": c.server, "key": c.server_key, "ca": c.ca,
           "client_cert": c.client, "client_key": c.client_key}  # the bus is mutual TLS
    with Env(proxy=False, redis=False, expect_errors=True) as env:
        cluster = RedisCluster(os.path.join(env.tmp, "cluster"), tls=tls)
        b = None
        try:
            start_ready(env, f"{cluster.directive(1)}\nredis_tls on\nredis_tls_ca {c.ca}")
            keys = keys_on_every_primary(cluster, 10)
            for k in keys:
                assert env.post("/orders", key=k, body=b"{}").status == 201
            for k in keys:
                r = env.post("/orders", key=k, body=b"{}")
                assert r.header("Idempotent-Replayed") == "true", r
                assert env.upstream.count(k) == 1
            counts = [p.cmd("DBSIZE") for p in cluster.primaries()]
            assert len(counts) == 3 and all(n > 0 for n in counts), counts
            tls_ports = {str(n.tls_port) for n in cluster.nodes}
            log = env.proxy.error_log()
            learned = [p for p in tls_ports if f"127.0.0.1:{p}: connected" in log]
            assert len(learned) == 3, (tls_ports, log[-800:])
            # without the cluster's CA nothing verifies: fail closed
            b = second_instance(env, f"{cluster.directive(1)}\nredis_tls on\n"
                                     f"redis_tls_ca {c.other_ca}",
                                name="untrusted")
            b.expect_errors = True
            r = request(b.port, "POST", "/orders", [("Idempotency-Key", new_key())], b"{}")
            assert r.status == 503, r
            assert "certificate verify failed" in b.error_log()
        finally:
            stop_all(env, b, cluster)


@alone
@alone
def test_a_replica_short_on_one_shard_fails_only_that_shards_claims():
    """redis_min_replicas 1 on a cluster with a replica per primary; one
    replica frozen: the claims of its primary's slots are given back and
    answered 503 (nothing executed), the other shards go on claiming, and
    /readyz says 503 while a shard cannot confirm; after SIGCONT every key
    executes once."""
    import signal as sig
    with Env(proxy=False, redis=False, expect_errors=True) as env:
        cluster = RedisCluster(os.path.join(env.tmp, "cluster"), replicas=1,
                               node_timeout_ms=60000)
        try:
            admin = start_ready(env, f"{cluster.directive()}\nredis_min_replicas 1 100ms")
            short = cluster.primaries()[0]
            info = short.cmd("INFO", "replication").decode()
            port = int(info.split("slave0:")[1].split("port=")[1].split(",")[0])
            replica = cluster.by_port(port)
            keys, on_short, others = keys_on_and_off(cluster, short)
            replica.proc.send_signal(sig.SIGSTOP)
            try:
                answers = {k: env.post("/orders", key=k, body=b"{}", timeout=10) for k in keys}
                assert request(admin, "GET", "/readyz").status == 503
            finally:
                replica.proc.send_signal(sig.SIGCONT)
            for k in on_short:
                assert_problem(answers[k], 503, "store-unavailable")
                assert env.upstream.count(k) == 0, k
            for k in others:
                assert answers[k].status == 201, (k, answers[k])
            assert f"redis 127.0.0.1:{short.port}: fewer replicas than redis_min_replicas" \
                in env.proxy.error_log()
            wait_until(lambda: request(admin, "GET", "/readyz").status == 200, 10 * SLOW,
                       what="/readyz 200 once the replica is back")

            def all_served():
                return all(env.post("/orders", key=k, body=b"{}").status == 201 for k in keys)
            wait_until(all_served, 10 * SLOW, interval=0.2, what="every key served")
            assert all(env.upstream.count(k) == 1 for k in keys)
        finally:
            stop_all(env, None, cluster)


def test_a_frozen_primary_fails_only_its_slots_and_recovers():
    """One primary SIGSTOPped: keys of its slots answer 503 (redis_timeout),
    nothing is executed for them; keys of the other primaries are served
    meanwhile; after SIGCONT every key works again, and what was answered 201
    replays. The cluster's node timeout outlasts the freeze: past it the
    other primaries would mark the frozen one failed and, with no replica to
    promote, answer CLUSTERDOWN for every slot (a whole-cluster 503, which is
    right, but not what this test is about)."""
    import signal as sig
    with Env(proxy=False, redis=False, expect_errors=True) as env:
        cluster = RedisCluster(os.path.join(env.tmp, "cluster"), node_timeout_ms=60000)
        try:
            start_ready(env, f"{cluster.directive()}\nredis_timeout 300ms")
            frozen = cluster.primaries()[0]
            keys, on_frozen, others = keys_on_and_off(cluster, frozen)
            frozen.proc.send_signal(sig.SIGSTOP)
            try:
                answers = {on_frozen[0]: env.post("/orders", key=on_frozen[0], body=b"{}",
                                                  timeout=10)}
                # a link to a healthy primary coming back makes idemproxy try
                # at once to give the lost claim back, while its primary is
                # still frozen; frozen past its three tries (one second
                # apart): tries that get no answer must not count
                healthy = next(p for p in cluster.primaries() if p.port != frozen.port)
                healthy.cmd("CLIENT", "KILL", "TYPE", "normal")
                killed = time.monotonic()
                time.sleep(0.5)  # idemproxy reconnects (backoff starts at 50 ms)
                answers.update({k: env.post("/orders", key=k, body=b"{}", timeout=10)
                                for k in keys if k != on_frozen[0]})
                time.sleep(max(0.0, killed + 4.0 - time.monotonic()))
            finally:
                frozen.proc.send_signal(sig.SIGCONT)
            for k in on_frozen:
                assert answers[k].status == 503, (k, answers[k])
                assert env.upstream.count(k) == 0, k
            for k in others:
                assert answers[k].status == 201, (k, answers[k])

            # the claims queued in the frozen primary's input land when it
            # resumes; idemproxy gives them back, so every key is served
            def all_served():
                return all(env.post("/orders", key=k, body=b"{}").status == 201
                           for k in on_frozen)
            wait_until(all_served, 10 * SLOW, interval=0.2, what="the thawed primary served")
            for k in keys:
                r = env.post("/orders", key=k, body=b"{}")
                assert r.status == 201, (k, r)
                assert env.upstream.count(k) == 1, k
        finally:
            stop_all(env, None, cluster)


def cpu_seconds(pid):
    """User plus system CPU time of a process (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def dialled_with_backoff(env, ports, seconds=3.0):
    """Over `seconds`, idemproxy's refused connects to ports stay at a
    backoff's pace and it stays idle (a link dialled again at once, on
    every loop turn, made ~60k connects a second and two busy cores)."""
    lines = [f"127.0.0.1:{p}: Connection refused" for p in ports]

    def refused():
        log = env.proxy.error_log()
        return sum(log.count(line) for line in lines)
    time.sleep(1)  # past the backoff's first steps (50, 100, 200, 400 ms)
    before, cpu = refused(), cpu_seconds(env.proxy.pid)
    time.sleep(seconds)
    tries, busy = refused() - before, cpu_seconds(env.proxy.pid) - cpu
    # 2 workers x 2 links a node (commands, pub/sub) x ~1 a second at most
    assert 0 < tries <= 8 * len(ports) * seconds, tries
    assert busy < 0.3 * seconds * SLOW, busy


def start_with_seed_down(env, seed, config):
    """seed killed, then idemproxy started on config with an admin listener
    (not waiting for /readyz: no map can be had yet); returns the admin port."""
    seed.kill()
    admin = free_port()
    env.start_proxy(f"{config}\nadmin_listen 127.0.0.1:{admin}")
    return admin


def seed_back(cluster, seed, admin):
    """A seed killed before idemproxy started is restarted; returns once the
    cluster has it again and idemproxy has the map and every primary."""
    seed.start()
    wait_until(cluster._settled, 20 * SLOW, what="the seed back in the cluster")
    wait_until(lambda: request(admin, "GET", "/readyz").status == 200, 10 * SLOW,
               what="/readyz 200 once the seed is back")


@alone
def test_an_unreachable_cluster_is_dialled_with_backoff_and_served_once_back():
    """The seed refusing connections at start (no map yet), and later every
    node of a loaded map: idemproxy dials them with backoff, not in a loop,
    and serves every shard once they are back."""
    with Env(proxy=False, redis=False, expect_errors=True) as env:
        cluster = RedisCluster(os.path.join(env.tmp, "cluster"), node_timeout_ms=60000)
        try:
            seed = cluster.nodes[0]
            admin = start_with_seed_down(env, seed, f"{cluster.directive(1)}\nworkers 2\n"
                                         "log_level debug")
            dialled_with_backoff(env, [seed.port])
            assert env.post("/orders", key=new_key()).status == 503
            seed_back(cluster, seed, admin)
            keys = keys_on_every_primary(cluster, 4)
            for k in keys:
                r = env.post("/orders", key=k)
                assert r.status == 201, (k, r, env.proxy.error_log()[-3000:])

            for n in cluster.nodes:
                n.kill()
            dialled_with_backoff(env, [n.port for n in cluster.nodes])
            assert env.post("/orders", key=new_key()).status == 503
            for n in cluster.nodes:
                n.start()
            wait_until(cluster._settled, 20 * SLOW, what="the cluster back")
            wait_until(lambda: request(admin, "GET", "/readyz").status == 200, 10 * SLOW,
                       what="/readyz 200 once the cluster is back")
            served_once(env, keys, executions=2)  # records lost with the nodes (no persistence)
        finally:
            stop_all(env, None, cluster)


def connections_from(cluster, proxy_pid):
    """How many client connections idemproxy holds on each node (by its
    sockets' local ports; the harness's own connection excluded)."""
    ports = set()
    inodes = set()
    fd_dir = f"/proc/{proxy_pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add((int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)))
    return {n.port: sum(1 for _, remote in ports if remote == n.port) for n in cluster.nodes}


@alone
def test_a_frozen_cluster_leaves_no_connection_behind():
    """Every node SIGSTOPped while requests come in: each link times out in
    turn, the last one with a CLUSTER SLOTS on its way. After the thaw
    idemproxy holds one command connection per primary and one pub/sub
    connection, as before (a link redialled while its connection was being
    closed once lost that new connection, open for good, one per freeze)."""
    import signal as sig
    with Env(proxy=False, redis=False, expect_errors=True) as env:
        cluster = RedisCluster(os.path.join(env.tmp, "cluster"), node_timeout_ms=60000)
        try:
            admin = start_ready(env, f"{cluster.directive()}\nredis_timeout 200ms\nworkers 1")
            held = connections_from(cluster, env.proxy.pid)
            assert sum(held.values()) == 4, held
            for n in cluster.nodes:
                n.proc.send_signal(sig.SIGSTOP)
            try:
                for _ in range(4):
                    assert env.post("/orders", key=new_key(), timeout=10).status == 503
                    time.sleep(0.5)
            finally:
                for n in cluster.nodes:
                    n.proc.send_signal(sig.SIGCONT)
            wait_until(lambda: request(admin, "GET", "/readyz").status == 200, 10 * SLOW,
                       what="/readyz 200 after the thaw")
            time.sleep(1.5)  # what was dialled during the freeze is set up by now
            after = connections_from(cluster, env.proxy.pid)
            assert sum(after.values()) == 4, (held, after)
            served_once(env, [new_key() for _ in range(9)])
        finally:
            stop_all(env, None, cluster)


@alone
def test_seeds_that_give_no_map_do_not_stall_the_others():
    """The first seeds answer but give no map: a plain Redis (no cluster
    support) and a cluster node that has joined no cluster (an empty slot
    list); the third, a real node, refuses at start. It is dialled again
    with backoff until it is back, the map is asked of it, every shard
    serves, and a waiting duplicate is woken by the cluster's PUBLISH.
    Before: the empty list was taken as the map and the real seed, owning no
    slot of it, was never dialled again (503 for good); the pub/sub link
    stayed on the plain Redis, where no completion is published (409 after
    the whole on_inflight wait)."""
    with Env(proxy=False, expect_errors=True) as env:
        os.makedirs(os.path.join(env.tmp, "lone"))
        lone = Redis(port=cluster_port(), tmpdir=os.path.join(env.tmp, "lone"), extra_args=[
            "--cluster-enabled", "yes",
            "--cluster-config-file", os.path.join(env.tmp, "lone-nodes.conf")])
        cluster = RedisCluster(os.path.join(env.tmp, "cluster"), node_timeout_ms=60000)
        try:
            seed = cluster.nodes[0]
            admin = start_with_seed_down(
                env, seed, f"redis_cluster 127.0.0.1:{env.redis.port} 127.0.0.1:{lone.port} "
                f"127.0.0.1:{seed.port}\nworkers 1\non_inflight wait 8s")
            for foreign in (env.redis, lone):
                wait_until(lambda: "no slot map from 127.0.0.1:%d" % foreign.port
                           in env.proxy.error_log(), 5 * SLOW, what="the foreign seeds asked")
            seed_back(cluster, seed, admin)
            served_once(env, [new_key() for _ in range(9)])
            key = new_key()
            duplicate_woken(env, key, cluster.owner(key_slot(rkey(key))),
                            lambda: env.post("/orders", key=key, timeout=15))
        finally:
            stop_all(env, None, cluster)
            lone.close()
