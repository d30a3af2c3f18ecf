"""The Grafana dashboard and Prometheus alert rules in deploy/ name only
metrics that idemproxy's /metrics has, and label values it uses; promtool
checks the rules where Debian's prometheus package provides it."""
import json
import os
import re
import shutil
import subprocess

from harness import Env, free_port, request

HERE = os.path.dirname(os.path.abspath(__file__))
DEPLOY = os.path.join(os.path.dirname(os.path.dirname(HERE)), "deploy")
DASHBOARD = os.path.join(DEPLOY, "grafana-dashboard.json")
RULES = os.path.join(DEPLOY, "prometheus-rules.yml")
OUTCOMES = {"miss", "replay", "inflight", "unknown", "mismatch", "nokey", "invalid", "too_large",
            "bypass", "reject", "store_error", "token_invalid", "token", "quota", "overloaded"}


def _exprs():
    with open(DASHBOARD) as f:
        dash = json.load(f)
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in dash["templating"]["list"] if v.get("type") == "query"]
    with open(RULES) as f:
        exprs += re.findall(r"^\s*expr:\s*(.+)$", f.read(), re.M)
    return exprs


def _families(text):
    names = set()
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            names.add(m.group(1))
            if m.group(2) == "histogram":
                names |= {m.group(1) + s for s in ("_bucket", "_sum", "_count")}
    return names


def test_every_metric_and_outcome_the_dashboard_and_rules_name_exists():
    admin = free_port()
    with Env(extra_config=f"admin_listen 127.0.0.1:{admin}") as env:
        assert env.post("/orders", key="dash-1").status == 201
        assert env.post("/orders", key="dash-1").status == 201
        families = _families(request(admin, "GET", "/metrics").body.decode())
    exprs = _exprs()
    assert len(exprs) >= 15, exprs
    named = set()
    for e in exprs:
        named |= set(re.findall(r"\bidemproxy_[a-z0-9_]+", e))
        for values in re.findall(r'outcome=~?"([^"]+)"', e):
            unknown = set(values.split("|")) - OUTCOMES
            assert not unknown, f"{e}: outcomes idemproxy never reports: {unknown}"
    missing = named - families
    assert not missing, f"named in deploy/ but not in /metrics: {sorted(missing)}"
    # what the issue asks the dashboard to show
    for needle in ("outcome=\"replay\"", "idemproxy_upstream_duration_seconds_bucket",
                   "idemproxy_redis_duration_seconds_bucket", "idemproxy_inflight_requests",
                   "idemproxy_redis_failovers_total", "outcome=\"store_error\""):
        assert any(needle in e for e in exprs), needle


def test_promtool_accepts_the_rules():
    promtool = shutil.which("promtool")
    if promtool is None:
        print("promtool not installed (Debian: apt-get install prometheus); rules not checked")
        return
    p = subprocess.run([promtool, "check", "rules", RULES], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
