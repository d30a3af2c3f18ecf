"""Chaos: two idemproxy instances share one Redis; under load from clients
that retry with their keys (as SDKs do), Redis and the instances are
SIGKILLed at random and started again. Whatever the clients see (503, 409,
502, refused connections), no key may execute twice (SPEC §4.6).

Redis runs with appendfsync always, as production Redis that holds the
promise must (operations.md): what it acknowledged survives its SIGKILL.
CHAOS_SECONDS (default 15) and CHAOS_SEED replay a run.
"""
import os
import random
import signal
import threading
import time

from harness import alone, SLOW, Env, Proxy, Redis, retrying_client


@alone
def test_kills_under_load_never_execute_a_key_twice():
    seed = int(os.environ.get("CHAOS_SEED", str(int(time.time()))))
    seconds = float(os.environ.get("CHAOS_SECONDS", "15"))
    rnd = random.Random(seed)
    cfg = "lock_ttl 2s\nupstream_timeout 1500ms\nredis_timeout 300ms\nworkers 2"
    with Env(proxy=False, redis=False, expect_errors=True) as env:
        redis = Redis(port=env.redis_port, tmpdir=env.tmp, persistent=True)
        proxies = [Proxy(env.upstream_port, env.redis_port, cfg, expect_errors=True)
                   for _ in range(2)]
        stats = {"keys": [], "done": 0, "unknown": 0, "gave_up": 0, "different_body": 0,
                 "replayed": 0}
        kills = {"redis": 0, "idemproxy": 0}
        lock = threading.Lock()
        stop = threading.Event()
        clients = [threading.Thread(target=retrying_client,
                                    args=(proxies, random.Random(rnd.random()), stop, stats,
                                          lock), daemon=True) for _ in range(8)]
        try:
            for c in clients:
                c.start()
            end = time.monotonic() + seconds
            victims = []  # each round kills Redis and both instances, in a random order
            while time.monotonic() < end:
                time.sleep(rnd.uniform(0.5, 1.5))
                if not victims:
                    victims = ["redis", 0, 1]
                    rnd.shuffle(victims)
                victim = victims.pop()
                if victim == "redis":
                    redis.kill()
                    time.sleep(rnd.uniform(0.1, 0.6))
                    redis.start()
                    kills["redis"] += 1
                else:
                    proxies[victim].stop(sig=signal.SIGKILL, check=False)
                    time.sleep(rnd.uniform(0.1, 0.6))
                    proxies[victim].start()
                    kills["idemproxy"] += 1
            stop.set()
            for c in clients:
                c.join(30 * SLOW)
            twice = {}
            for key in stats["keys"]:
                n = env.upstream.count(key)
                if n > 1:
                    twice[key] = n
            summary = (f"chaos seed={seed} {seconds:.0f}s: {len(stats['keys'])} keys, "
                       f"{stats['done']} done ({stats['replayed']} by replay), "
                       f"{stats['unknown']} unknown, {stats['gave_up']} gave up; kills: "
                       f"{kills['redis']} redis, {kills['idemproxy']} idemproxy; "
                       f"executed twice: {len(twice)}")
            print(summary)
            assert not twice, f"{summary}: {sorted(twice.items())[:10]}"
            assert stats["different_body"] == 0, summary
            assert stats["done"] > 50 and kills["redis"] and kills["idemproxy"], summary
        finally:
            stop.set()
            for p in proxies:
                p.close()
            redis.close()
