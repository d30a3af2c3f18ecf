#!/usr/bin/env python3
"""Runs the end-to-end tests: every test_* function in tests/e2e/test_*.py.

    python3 tests/e2e/run.py                 # all of them
    python3 tests/e2e/run.py replay sighup   # names containing any of these

Each test builds and tears down its own processes (see harness.Env). Prints
one line per test and, last, "N passed, M failed"; exits 1 if any failed.
A test that runs longer than TEST_TIMEOUT seconds (default 60) fails.
"""

import importlib.util
import inspect
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


def main(argv):
    filters = argv[1:]
    tests = discover(filters)
    signal.signal(signal.SIGALRM, _on_alarm)
    passed = failed = 0
    start_all = time.monotonic()
    for name, func, import_error in tests:
        if func is None:
            failed += 1
            print(f"FAIL {name}: cannot import\n{import_error}", flush=True)
            continue
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
            passed += 1
            print(f"PASS {name} ({dt:.1f}s)", flush=True)
            continue
        failed += 1
        reason = first_line(error) or type(error).__name__
        print(f"FAIL {name}: {reason} ({dt:.1f}s)", flush=True)
        detail = tb.rstrip()
        if os.environ.get("E2E_QUIET") != "1":
            print("    " + detail.replace("\n", "\n    "))
            for label, text in harness.FAILURE_CONTEXT:
                print(f"    --- {label} (tail):")
                print("    " + text.replace("\n", "\n    "))
        sys.stdout.flush()
    total = time.monotonic() - start_all
    print(f"e2e: {len(tests)} tests in {total:.1f}s", flush=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed or not tests else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
