#!/usr/bin/env python3
"""Runs the end-to-end tests: every test_* function in tests/e2e/test_*.py.

    python3 tests/e2e/run.py                 # all of them
    python3 tests/e2e/run.py replay sighup   # names containing any of these

Each test builds and tears down its own processes (see harness.Env). Prints
one line per test and, last, "N passed, M failed"; exits 1 if any failed.
A test that runs longer than TEST_TIMEOUT seconds (default 60) fails.

Most tests spend their time waiting on sockets and timers, so E2E_JOBS
(default 3) of them run at once, each worker process on its own range of
ports; tests marked @harness.alone (load, kills, failovers) run afterwards,
one at a time. E2E_JOBS=1 runs everything in order in this process.
"""

import importlib.util
import inspect
import multiprocessing
import os
import signal
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness  # noqa: E402

TEST_TIMEOUT = int(os.environ.get("TEST_TIMEOUT", "60")) * (3 if harness.SANITIZE else 1)


class TestTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise TestTimeout(f"test ran longer than {TEST_TIMEOUT}s")


def discover(filters):
    tests = []
    for fname in sorted(os.listdir(HERE)):
        if not (fname.startswith("test_") and fname.endswith(".py")):
            continue
        modname = fname[:-3]
        spec = importlib.util.spec_from_file_location(modname, os.path.join(HERE, fname))
        mod = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(mod)
        except Exception:  # noqa: BLE001 - an import error is a failed test
            tests.append((f"{modname}.<import>", None, traceback.format_exc()))
            continue
        funcs = [(name, f) for name, f in vars(mod).items()
                 if name.startswith("test_") and inspect.isfunction(f) and f.__module__ == modname]
        funcs.sort(key=lambda nf: nf[1].__code__.co_firstlineno)
        for name, f in funcs:
            full = f"{modname}.{name}"
            if filters and not any(s in full for s in filters):
                continue
            tests.append((full, f, None))
    return tests


def first_line(text):
    text = str(text).strip()
    return text.splitlines()[0] if text else ""


def run_test(name, func):
    """Runs one test in this process: (passed, seconds, report lines)."""
    harness.FAILURE_CONTEXT.clear()
    t0 = time.monotonic()
    signal.alarm(TEST_TIMEOUT)
    error = None
    try:
        func()
    except BaseException as e:  # noqa: BLE001 - every failure is reported
        if isinstance(e, KeyboardInterrupt):
            signal.alarm(0)
            raise
        error = e
        tb = traceback.format_exc()
    finally:
        signal.alarm(0)
    dt = time.monotonic() - t0
    leftovers = harness.reap_leftovers()
    if leftovers and error is None:
        error = harness.TestFailure(f"{leftovers} process(es) left running by the test")
        tb = str(error)
    if error is None:
        return True, f"PASS {name} ({dt:.1f}s)"
    reason = first_line(error) or type(error).__name__
    report = f"FAIL {name}: {reason} ({dt:.1f}s)"
    if os.environ.get("E2E_QUIET") != "1":
        report += "\n    " + tb.rstrip().replace("\n", "\n    ")
        for label, text in harness.FAILURE_CONTEXT:
            report += f"\n    --- {label} (tail):\n    " + text.replace("\n", "\n    ")
    return False, report


# The tests, discovered once before the workers fork: a worker is handed an
# index into this list.
TESTS = []


def _worker_start():
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner stops the pool
    harness.use_port_range(multiprocessing.current_process()._identity[0])


def _worker_run(index):
    name, func, _ = TESTS[index]
    return run_test(name, func)


def main(argv):
    TESTS[:] = discover(argv[1:])
    jobs = max(1, int(os.environ.get("E2E_JOBS", "3")))
    signal.signal(signal.SIGALRM, _on_alarm)
    passed = failed = 0
    start_all = time.monotonic()

    def report(ok, text):
        nonlocal passed, failed
        if ok:
            passed += 1
        else:
            failed += 1
        print(text, flush=True)

    for name, func, import_error in TESTS:
        if func is None:
            report(False, f"FAIL {name}: cannot import\n{import_error}")
    runnable = [i for i, (_, func, _) in enumerate(TESTS) if func is not None]
    shared = [i for i in runnable if jobs > 1 and not getattr(TESTS[i][1], "alone", False)]
    serial = [i for i in runnable if i not in shared]
    if shared:
        pool = multiprocessing.get_context("fork").Pool(jobs, initializer=_worker_start)
        try:
            for ok, text in pool.imap_unordered(_worker_run, shared):
                report(ok, text)
        finally:
            pool.terminate()
            pool.join()
    # Ports from a range handed out in turn, as in the pool's workers (the
    # pool is gone by now): a port the kernel picks for bind(0) can be picked
    # again before the test that took it binds it.
    harness.use_port_range(0)
    for i in serial:
        name, func, _ = TESTS[i]
        report(*run_test(name, func))
    total = time.monotonic() - start_all
    print(f"e2e: {len(TESTS)} tests in {total:.1f}s ({jobs} at a time)", flush=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed or not TESTS else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
