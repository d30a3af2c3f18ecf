"""End-to-end tests of idemproxy as a daemon (SPEC §2): command line, exit
codes, signals, sd_notify, and the demo script."""

import os
import signal
import socket
import subprocess
import threading
import time
import uuid

from harness import (ROOT, SLOW, Env, TestFailure, assert_problem, background, connect_refused,
                     free_port, idemproxy_bin, run_idemproxy, upstream_bin, wait_until, Client)


def new_key():
    return "k-" + uuid.uuid4().hex


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


# ---------------------------------------------------------------- command line


def test_check_config_ok():
    with Env(proxy=False) as env:
        path = os.path.join(env.tmp, "good.conf")
        write(path, f"listen 127.0.0.1:{free_port()}\n"
                    f"upstream http://127.0.0.1:{env.upstream_port}\n"
                    f"redis 127.0.0.1:{env.redis_port}\n"
                    f"ttl 1h; lock_ttl 10s   # two on one line\n"
                    f"upstream_timeout 5s\n"
                    f"route /webhooks/github {{ key header:X-GitHub-Delivery; scope none }}\n")
        code, out, err = run_idemproxy(["-t", "-c", path])
        assert code == 0, f"exit {code}\nstdout: {out}\nstderr: {err}"
        assert "configuration OK" in out + err, f"stdout: {out!r} stderr: {err!r}"


def test_check_config_error_names_file_and_line():
    with Env(proxy=False, redis=False, upstream=False) as env:
        path = os.path.join(env.tmp, "bad.conf")
        write(path, "upstream http://127.0.0.1:1\n"
                    "# a comment\n"
                    "no_such_directive on\n")
        code, out, err = run_idemproxy(["-t", "-c", path])
        assert code == 1, f"exit {code}\nstderr: {err}"
        assert f"{path}:3: " in err, f"stderr lacks '{path}:3: ': {err!r}"


def test_version():
    code, out, err = run_idemproxy(["-v"])
    assert code == 0, (code, out, err)
    text = (out + err).strip()
    assert text and any(c.isdigit() for c in text), f"no version in {text!r}"


def test_missing_upstream_is_a_config_error():
    with Env(proxy=False, redis=False, upstream=False) as env:
        path = os.path.join(env.tmp, "noup.conf")
        write(path, f"listen 127.0.0.1:{free_port()}\n"
                    f"error_log {os.path.join(env.tmp, 'error.log')}\n")
        code, out, err = run_idemproxy(["-t", "-c", path])
        assert code == 1, f"-t exit {code}: {err}"
        code, out, err = run_idemproxy(["-c", path])
        assert code == 1, f"exit {code}: {err}"


def test_upstream_timeout_not_below_lock_ttl_is_an_error():
    with Env(proxy=False, redis=False, upstream=False) as env:
        path = os.path.join(env.tmp, "timeouts.conf")
        write(path, "upstream http://127.0.0.1:1\nlock_ttl 5s\nupstream_timeout 10s\n")
        code, out, err = run_idemproxy(["-t", "-c", path])
        assert code == 1, f"exit {code}: {err}"


def test_listen_port_in_use_exits_2():
    with Env(proxy=False) as env:
        blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            blocker.bind(("127.0.0.1", 0))
            blocker.listen(1)
            port = blocker.getsockname()[1]
            path = os.path.join(env.tmp, "busy.conf")
            write(path, f"listen 127.0.0.1:{port}\n"
                        f"upstream http://127.0.0.1:{env.upstream_port}\n"
                        f"redis 127.0.0.1:{env.redis_port}\n"
                        f"error_log {os.path.join(env.tmp, 'error.log')}\n"
                        f"access_log off\n")
            code, out, err = run_idemproxy(["-c", path], timeout=10)
            assert code == 2, f"exit {code}\nstderr: {err}"
        finally:
            blocker.close()


def test_unopenable_log_file_exits_2():
    with Env(proxy=False) as env:
        path = os.path.join(env.tmp, "badlog.conf")
        write(path, f"listen 127.0.0.1:{free_port()}\n"
                    f"upstream http://127.0.0.1:{env.upstream_port}\n"
                    f"redis 127.0.0.1:{env.redis_port}\n"
                    f"access_log {os.path.join(env.tmp, 'no-such-dir', 'access.log')}\n")
        code, out, err = run_idemproxy(["-c", path], timeout=10)
        assert code == 2, f"exit {code}\nstderr: {err}"


# ---------------------------------------------------------------- signals


def test_sigterm_finishes_in_flight_request():
    with Env() as env:
        key = new_key()
        port = env.proxy.port
        job = background(env.post, "/orders", key=key, body=b"{}",
                         headers={"X-Test-Delay": "2000"})
        wait_until(lambda: env.upstream.count(key) == 1, 3, what="request at the upstream")
        env.proxy.signal(signal.SIGTERM)
        # while the request is still in flight
        wait_until(lambda: connect_refused(port), 1.2, interval=0.02,
                   what="new connections to be refused after SIGTERM")
        assert env.proxy.running(), "exited before the in-flight request finished"
        r = job.result(10)
        assert r.status == 201, f"in-flight request lost on SIGTERM: {r!r}"
        code = env.proxy.wait(10 * SLOW)
        assert code == 0, f"exit code {code} after SIGTERM"
        env.proxy.stop()  # checks the logs


def test_sighup_reload_applies_new_config():
    with Env() as env:
        key = new_key()
        with Client(env.proxy.port) as kept:
            r = kept.request("POST", "/orders", [("Idempotency-Key", key)], b"{}")
            assert r.status == 201, r
            env.proxy.write_config("on_duplicate reject")
            env.proxy.signal(signal.SIGHUP)

            def rejected():
                resp = env.post("/orders", key=key, body=b"{}")
                return resp if resp.status == 409 else None

            r = wait_until(rejected, 3 * SLOW, interval=0.1, what="reloaded on_duplicate reject")
            assert_problem(r, 409, "already-completed")
            assert env.proxy.running()
            # the connection opened before the reload still works
            r = kept.request("POST", "/orders", [("Idempotency-Key", new_key())], b"{}")
            assert r.status == 201, r
        assert env.upstream.count(key) == 1


def test_sighup_with_invalid_config_keeps_the_old_one():
    with Env(extra_config="on_duplicate reject", expect_errors=True) as env:
        key = new_key()
        assert env.post("/orders", key=key, body=b"{}").status == 201
        before = len(env.proxy.error_log())
        with open(env.proxy.config_path, "a") as f:
            f.write("this_is_not_a_directive 1\n")
        env.proxy.signal(signal.SIGHUP)
        name = os.path.basename(env.proxy.config_path)
        wait_until(lambda: name + ":" in env.proxy.error_log()[before:], 3 * SLOW,
                   what="the reload error in the error log")
        time.sleep(0.2)
        assert env.proxy.running(), "process died on a bad reload"
        r = env.post("/orders", key=key, body=b"{}")
        assert_problem(r, 409, "already-completed")
        assert env.post("/orders", key=new_key(), body=b"{}").status == 201


def test_sigusr1_reopens_access_log():
    with Env() as env:
        assert env.post("/orders", key=new_key(), body=b"{}").status == 201
        env.proxy.wait_access_log(1)
        log = env.proxy.access_log_path
        os.rename(log, log + ".1")
        env.proxy.signal(signal.SIGUSR1)
        wait_until(lambda: "SIGUSR1: log files reopened" in env.proxy.error_log(), 3,
                   what="the reopen")
        key = new_key()
        assert env.post("/orders", key=key, body=b"{}").status == 201
        entries = wait_until(lambda: os.path.exists(log) and env.proxy.access_log(), 3,
                             what="a new access.log after SIGUSR1")
        assert any(e.get("key") == key for e in entries), entries
        assert env.proxy.running()


def test_sd_notify():
    with Env(proxy=False) as env:
        path = os.path.join(env.tmp, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(0.1)
        messages = []  # one entry per NAME=VALUE field, in arrival order
        stop = threading.Event()

        def receive():
            while not stop.is_set():
                try:
                    data = sock.recv(4096)
                except socket.timeout:
                    continue
                except OSError:
                    return
                messages.extend(f for f in data.decode("utf-8", "replace").split("\n") if f)

        t = threading.Thread(target=receive, daemon=True)
        t.start()
        try:
            env.proxy_env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}
            env.start_proxy("")
            wait_until(lambda: "READY=1" in messages, 5 * SLOW, what="READY=1")
            n = messages.count("WATCHDOG=1")
            wait_until(lambda: messages.count("WATCHDOG=1") >= n + 2, 2 * SLOW,
                       what="repeated WATCHDOG=1")
            start = len(messages)
            env.proxy.signal(signal.SIGHUP)
            wait_until(lambda: "RELOADING=1" in messages[start:], 3 * SLOW, what="RELOADING=1")
            i = messages.index("RELOADING=1", start)
            wait_until(lambda: "READY=1" in messages[i + 1:], 3 * SLOW,
                       what="READY=1 after RELOADING=1")
            assert env.proxy.running()
            start = len(messages)
            env.proxy.stop()
            wait_until(lambda: "STOPPING=1" in messages[start:], 1, what="STOPPING=1")
        finally:
            stop.set()
            t.join(2)
            sock.close()


# ---------------------------------------------------------------- demo


def test_demo_selftest():
    if not os.path.exists(idemproxy_bin()):
        raise TestFailure(f"idemproxy binary not found: {idemproxy_bin()}")
    # every port from this worker's range: a port the kernel picks for the
    # demo can be taken, before its server binds it, as the local port of
    # another test's client connection
    env = dict(os.environ, DEMO_SELFTEST="1", PORT=str(free_port()),
               DEMO_REDIS_PORT=str(free_port()), DEMO_UPSTREAM_PORT=str(free_port()),
               IDEMPROXY_BIN=idemproxy_bin(), UPSTREAM_BIN=upstream_bin())
    # Its own session, so a hung demo can be stopped with all it started
    # (by the process-group id of the shell we started, never by name).
    p = subprocess.Popen(["sh", os.path.join(ROOT, "scripts", "demo.sh")], cwd=ROOT, env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, start_new_session=True)
    try:
        data, _ = p.communicate(timeout=60 * SLOW)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate(timeout=5)
        raise TestFailure("scripts/demo.sh with DEMO_SELFTEST=1 did not finish in time") from None
    out = data.decode("utf-8", "replace")
    assert p.returncode == 0, f"demo self-test exit {p.returncode}:\n{out[-3000:]}"
    assert "Idempotent-Replayed" in out, f"demo output shows no replay:\n{out[-3000:]}"


def test_make_install_honours_prefix_and_destdir():
    import tempfile
    dest = tempfile.mkdtemp(prefix="idem-install-")
    try:
        out = subprocess.run(["make", "-s", "install", f"DESTDIR={dest}", "PREFIX=/opt/idem",
                              f"SANITIZE={os.environ.get('SANITIZE', '0')}"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        binary = os.path.join(dest, "opt/idem/bin/idemproxy")
        assert os.access(binary, os.X_OK)
        conf = os.path.join(dest, "etc/idemproxy/idemproxy.conf")
        assert subprocess.run([binary, "-t", "-c", conf], capture_output=True).returncode == 0
        unit = open(os.path.join(dest, "opt/idem/lib/systemd/system/idemproxy.service")).read()
        assert "ExecStart=/opt/idem/bin/idemproxy" in unit and "/usr/local" not in unit
        for page in ("man5/idemproxy.conf.5", "man8/idemproxy.8"):
            assert os.path.isfile(os.path.join(dest, "opt/idem/share/man", page)), page
    finally:
        subprocess.run(["rm", "-rf", dest])


def test_second_instance_on_the_same_port_exits_2():
    with Env(expect_errors=True) as env:  # the second one logs its failure to the same file
        code, out, err = run_idemproxy(["-c", env.proxy.config_path], timeout=10)
        assert code == 2, f"a second instance shared the port: exit {code}\nstderr: {err}"


def test_check_and_reload_refuse_an_upstream_that_does_not_resolve():
    with Env(expect_errors=True) as env:
        bad = os.path.join(env.tmp, "bad-upstream.conf")
        text = open(env.proxy.config_path).read()
        text = text.replace(f"upstream http://127.0.0.1:{env.upstream_port}",
                            "upstream http://no-such-host.invalid:80")
        text = "\n".join("access_log off" if ln.startswith("access_log ") else ln
                         for ln in text.splitlines()) + "\n"
        write(bad, text)
        code, out, err = run_idemproxy(["-t", "-c", bad], timeout=20)
        assert code == 1 and "no-such-host.invalid" in err, (code, err)
        # the same change by SIGHUP changes nothing, not even the logs
        write(env.proxy.config_path, text)
        env.proxy.signal(signal.SIGHUP)
        wait_until(lambda: "reload failed" in env.proxy.error_log(), 10, what="reload refused")
        n = len(env.proxy.access_log())
        assert env.post("/orders", key="k-" + uuid.uuid4().hex).status == 201
        env.proxy.wait_access_log(n + 1)
