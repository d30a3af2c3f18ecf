#!/usr/bin/env python3
"""The Debian package as an operator meets it (SPEC §12): `make deb-test`.

    python3 tests/package/test_deb.py build/deb/idemproxy_VERSION_ARCH.deb

Checks, in order, each printed as it passes:
  1. the control data: version that of debian/changelog, /etc/idemproxy/
     idemproxy.conf a conffile, the unit's maintainer scripts present;
  2. lintian: no error (warnings and infos are printed, not fatal);
  3. the files, unpacked with dpkg-deb -x into a scratch root: the binary,
     the unit whose ExecStart* and ExecReload name it and the packaged
     config, `systemd-analyze verify` of the unit (when systemd-analyze
     exists), the logrotate rule (the unit's log directory, SIGUSR1), both
     man pages rendered by man(1) and groff without a warning;
  4. the packaged binary: -v prints the package version, -t accepts the
     packaged config as it is (what ExecStartPre runs);
  5. the packaged binary run as ExecStart runs it, on a copy of the packaged
     config whose listen, upstream and redis lines only are moved to free
     loopback ports, with a real redis-server and build/test-upstream: a
     keyed POST twice executes once and the second is the replay.

Uses the end-to-end harness (tests/e2e/harness.py) for the processes. Stops
at the first failure with exit 1.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import harness  # noqa: E402
from manpage import changelog_version_and_date  # noqa: E402

CONF = "/etc/idemproxy/idemproxy.conf"
BINARY = "/usr/sbin/idemproxy"
UNIT = "/lib/systemd/system/idemproxy.service"
LOGROTATE = "/etc/logrotate.d/idemproxy"
MAN_PAGES = ("/usr/share/man/man8/idemproxy.8.gz", "/usr/share/man/man5/idemproxy.conf.5.gz")
REPLAY = "Idempotent-Replayed"


def run(argv, **kwargs):
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)


def ok(what):
    print(f"ok   {what}", flush=True)


def check_control(deb, scratch):
    version, _ = changelog_version_and_date(os.path.join(ROOT, "debian", "changelog"))
    got = run(["dpkg-deb", "-f", deb, "Version"]).stdout.strip()
    assert got == version, f"package version {got!r}, debian/changelog says {version!r}"
    control = os.path.join(scratch, "DEBIAN")
    out = run(["dpkg-deb", "-e", deb, control])
    assert out.returncode == 0, out.stderr
    conffiles = open(os.path.join(control, "conffiles")).read().split()
    assert CONF in conffiles, f"{CONF} is not a conffile: {conffiles}"
    postinst = open(os.path.join(control, "postinst")).read()
    assert "deb-systemd-helper" in postinst and "idemproxy.service" in postinst, \
        "postinst does not enable the unit (dh_installsystemd)"
    ok(f"control: version {version}, conffile {CONF}, unit enabled by postinst")
    return version


def check_lintian(deb):
    if shutil.which("lintian") is None:
        raise AssertionError("lintian is not installed (make deb-test installs it)")
    out = run(["lintian", "--display-info", deb])
    tags = [ln for ln in out.stdout.splitlines() if re.match(r"^[EWIPX]: ", ln)]
    errors = [ln for ln in tags if ln.startswith("E: ")]
    for ln in tags:
        print(f"     {ln}")
    assert not errors and out.returncode == 0, \
        f"lintian reports errors (exit {out.returncode}):\n" + "\n".join(errors) + out.stderr
    ok(f"lintian: no error ({len(tags)} other tag(s))")


def unit_commands(text):
    """{key: [argv, ...]} of the Exec* lines of a unit file."""
    cmds = {}
    for line in text.splitlines():
        m = re.match(r"^(Exec\w+)=(.*)$", line)
        if m:
            argv = shlex.split(m.group(2))
            argv[0] = argv[0].lstrip("-@:+!")
            cmds.setdefault(m.group(1), []).append(argv)
    return cmds


def check_files(root):
    binary = root + BINARY
    assert os.path.isfile(binary) and os.access(binary, os.X_OK), f"{BINARY} missing"
    assert os.path.isfile(root + CONF), f"{CONF} missing"

    unit_text = open(root + UNIT).read()
    cmds = unit_commands(unit_text)
    assert cmds.get("ExecStart") == [[BINARY, "-c", CONF]], \
        f"ExecStart is {cmds.get('ExecStart')}, not {BINARY} -c {CONF}"
    for key in ("ExecStartPre", "ExecReload"):
        assert [BINARY, "-t", "-c", CONF] in cmds.get(key, []), f"{key} does not check {CONF}"
    for key, argvs in cmds.items():
        for argv in argvs:
            path = root + argv[0] if argv[0].startswith("/usr/sbin/idemproxy") else argv[0]
            assert os.access(path, os.X_OK), f"{key}: {argv[0]} is not in the package or system"
    ok(f"unit: ExecStart {BINARY} -c {CONF} is in the package; -t before start and reload")

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        print("skip systemd-analyze verify: systemd-analyze is not installed")
    else:
        # The unit as installed, but with the binary found in the scratch
        # root, and man(1) looking there for its Documentation= pages.
        unit_dir = tempfile.mkdtemp(prefix="idem-unit-")
        try:
            copy = os.path.join(unit_dir, "idemproxy.service")
            with open(copy, "w") as f:
                f.write(unit_text.replace(BINARY, binary))
            out = run([analyze, "verify", copy],
                      env=dict(os.environ, MANPATH=root + "/usr/share/man"))
            assert out.returncode == 0 and not out.stderr.strip(), \
                f"systemd-analyze verify (exit {out.returncode}):\n{out.stderr}"
        finally:
            shutil.rmtree(unit_dir, ignore_errors=True)
        ok("systemd-analyze verify: the unit is clean")

    rotate = open(root + LOGROTATE).read()
    assert re.search(r"^/var/log/idemproxy/\*\.log \{", rotate, re.M), rotate
    assert re.search(r"postrotate\s.*kill\s.*USR1\s.*idemproxy\.service.*endscript", rotate,
                     re.S), f"{LOGROTATE} does not send SIGUSR1 after rotating:\n{rotate}"
    assert "LogsDirectory=idemproxy" in unit_text, "the unit's log directory is not idemproxy"
    ok(f"logrotate: {LOGROTATE} rotates /var/log/idemproxy/*.log and sends SIGUSR1")

    for page in MAN_PAGES:
        path = root + page
        assert os.path.isfile(path), f"{page} missing"
        for width in ("80", "120"):  # lintian renders at 120
            out = run(["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", path],
                      env=dict(os.environ, LC_ALL="C.UTF-8", MANROFFSEQ="", MANWIDTH=width))
            assert out.returncode == 0 and not out.stderr.strip(), \
                f"man -l {page} at width {width}:\n{out.stderr}"
        out = subprocess.run(f"zcat {shlex.quote(path)} | groff -ww -z -man", shell=True,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and not out.stderr.strip(), f"groff {page}:\n{out.stderr}"
    conf5 = run(["man", "-l", root + MAN_PAGES[1]], env=dict(os.environ, MANWIDTH="80")).stdout
    assert "redis_min_replicas" in conf5 and "SEE ALSO" in conf5, "idemproxy.conf(5) is empty"
    ok("man pages: idemproxy(8), idemproxy.conf(5) render without a warning")


def check_binary(root, version):
    binary = root + BINARY
    out = run([binary, "-v"])
    assert out.returncode == 0 and out.stdout.strip() == f"idemproxy {version}", \
        f"-v printed {out.stdout!r} (exit {out.returncode}), not idemproxy {version}"
    out = run([binary, "-t", "-c", root + CONF])
    assert out.returncode == 0 and "configuration OK" in out.stdout, \
        f"the packaged config does not pass -t (exit {out.returncode}):\n{out.stdout}{out.stderr}"
    ok(f"binary: -v says {version}; -t accepts the packaged config")


def moved(conf_text, listen, upstream, redis):
    """The packaged config with its one listen, upstream and redis lines
    (and nothing else) pointing at the test's ports."""
    want = {"listen": f"listen 127.0.0.1:{listen}",
            "upstream": f"upstream http://127.0.0.1:{upstream}",
            "redis": f"redis 127.0.0.1:{redis}"}
    seen = {name: 0 for name in want}
    lines = []
    for line in conf_text.splitlines():
        name = line.split()[0] if line.strip() and not line.lstrip().startswith("#") else None
        if name in want:
            seen[name] += 1
            line = want[name]
        lines.append(line)
    assert all(n == 1 for n in seen.values()), f"the packaged config sets these lines: {seen}"
    return "\n".join(lines) + "\n"


def check_replay(root):
    os.environ["IDEMPROXY_BIN"] = root + BINARY
    conf_text = open(root + CONF).read()
    tmp = tempfile.mkdtemp(prefix="idem-deb-")
    redis = upstream = proxy = None
    try:
        redis = harness.Redis(tmpdir=tmp)
        upstream = harness.Upstream(tmpdir=tmp)
        port = harness.free_port()
        # harness.Proxy starts IDEMPROXY_BIN -c FILE: ExecStart's command line.
        proxy = harness.Proxy(upstream.port, redis.port, tmpdir=tmp, port=port,
                              config_text=moved(conf_text, port, upstream.port, redis.port))
        key = "deb-" + uuid.uuid4().hex
        body = b'{"sku":"A1"}'
        first = proxy.request("POST", "/orders", {"Idempotency-Key": key}, body)
        second = proxy.request("POST", "/orders", {"Idempotency-Key": key}, body)
        assert first.status == 201 and first.header(REPLAY) is None, f"first: {first!r}"
        assert second.status == 201 and second.header(REPLAY) == "true", f"second: {second!r}"
        assert second.body == first.body, f"replay body {second.body!r} vs {first.body!r}"
        assert upstream.count(key) == 1, f"the upstream ran the key {upstream.count(key)} times"
        assert any(k.endswith(key) for k in redis.keys()), f"no key in Redis: {redis.keys()}"
        ok("packaged binary on the packaged config: the second POST is a replay, executed once")
    finally:
        for part in (proxy, upstream, redis):
            if part is not None:
                try:
                    part.close()
                except Exception as e:  # noqa: BLE001 - a failed stop fails the test
                    for label, text in harness.FAILURE_CONTEXT:
                        print(f"--- {label}:\n{text}")
                    raise AssertionError(f"stopping {type(part).__name__}: {e}") from None
        shutil.rmtree(tmp, ignore_errors=True)
        harness.reap_leftovers()


def main(argv):
    if len(argv) != 2 or not os.path.isfile(argv[1]):
        sys.stderr.write("usage: test_deb.py PACKAGE.deb\n")
        return 2
    deb = os.path.abspath(argv[1])
    t0 = time.monotonic()
    scratch = tempfile.mkdtemp(prefix="idem-deb-root-")
    root = os.path.join(scratch, "root")
    try:
        version = check_control(deb, scratch)
        check_lintian(deb)
        out = run(["dpkg-deb", "-x", deb, root])
        assert out.returncode == 0, out.stderr
        check_files(root)
        check_binary(root, version)
        check_replay(root)
    except (AssertionError, harness.TestFailure, OSError, subprocess.SubprocessError) as e:
        print(f"FAIL {e}", flush=True)
        return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"package test passed in {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
