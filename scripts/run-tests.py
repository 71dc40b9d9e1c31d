#!/usr/bin/env python3
"""Builds and runs what `cargo test --all-features` does, binaries side by side.

Cargo builds every target and then runs the test binaries one after
another; here cargo builds (`cargo test --all-features --no-run`: the
library, the binary, the examples, the tests) and each test binary starts
as soon as it is built and the programs the tests run (the `selfdump`
binary, the examples) are, SELFDUMP_TEST_JOBS at a time (default 4), while
cargo builds the rest. Most of a binary's time is spent waiting (on CRIU,
on the programs it checkpoints, on the deadlines it tests), so two cores
carry several binaries and the compiler at once: the 41 binaries took
197 s one after another here, the longest alone 30 s. Then cargo builds
the benches (so that they are linted and keep building; `cargo test` does
not run them) and the doc tests run.

Each binary's output goes to a log, printed whole if it fails; a line per
binary as it ends; a summary at the end (libtest's counts and the
adversarial suite's). Exits 1 if the build or any binary failed. Arguments
are passed to every binary (a libtest filter, `--nocapture`, ...).

Run alone, after the others: whatever steers the kernel's next pid
(`ns_last_pid`), since any process forking beside it would take that pid:
the binary `pid_taken_meanwhile`, and the adversarial suite's attacks that
must (`ADVERSARIAL_ALONE=only`; its other attacks run beside the rest, with
`ADVERSARIAL_ALONE=skip`).

Not cargo-nextest: it runs binaries of the libtest harness only, and six of
ours have their own (`harness = false`).
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import queue

JOBS = max(1, int(os.environ.get("SELFDUMP_TEST_JOBS", "4")))
# started first when several wait, so that short ones fill the time beside them
LONGEST_FIRST = ["adversarial", "hundred_generations", "isolated_copies", "copies_deadline",
                 "commit_crashes", "store", "embedding", "diagnoses", "generations"]
ALONE = ["pid_taken_meanwhile"]
BUILDS = [
    # the library, the binary, the examples, the tests
    ["cargo", "test", "--all-features", "--no-run", "--quiet",
     "--message-format=json-render-diagnostics"],
    # the benches: built and linted, not run
    ["cargo", "test", "--all-features", "--benches", "--no-run", "--quiet",
     "--message-format=json-render-diagnostics"],
]


def programs():
    """The binaries and examples of the package: what the tests run."""
    metadata = json.loads(subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1"],
        check=True, capture_output=True, text=True).stdout)
    return {(t["kind"][0], t["name"]) for p in metadata["packages"] for t in p["targets"]
            if t["kind"][0] in ("bin", "example")}


def build(events):
    """Runs the builds one after another (cargo holds the build directory
    for each), putting on `events` ("built", kind, name, executable, test)
    for each artifact with an executable, then ("done", status)."""
    for argv in BUILDS:
        cargo = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        for line in cargo.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if message.get("reason") == "compiler-artifact" and message.get("executable"):
                target = message["target"]
                events.put(("built", target["kind"][0], target["name"], message["executable"],
                            message["profile"]["test"]))
        status = cargo.wait()
        if status != 0:
            events.put(("done", status))
            return
    events.put(("done", 0))


class Job:
    def __init__(self, name, argv, env, logs):
        self.name = name
        self.log_path = os.path.join(logs, name + ".log")
        log = open(self.log_path, "wb")
        self.started = time.monotonic()
        self.process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT)
        log.close()


def command(name, exe_of, extra):
    env = dict(os.environ, SELFDUMP_EXAMPLES_BUILT="1")
    if name == "doctests":
        return ["cargo", "test", "--all-features", "--doc", "--quiet", "--"] + extra, env
    # what `cargo test` gives a test binary (cargo itself must not get it: a
    # dependency's fingerprint would change)
    env["CARGO_MANIFEST_DIR"] = os.getcwd()
    if name == "adversarial":
        env["ADVERSARIAL_ALONE"] = "skip"
    if name == "adversarial-alone":
        env["ADVERSARIAL_ALONE"] = "only"
        return [exe_of["adversarial"]] + extra, env
    return [exe_of[name]] + extra, env


def summary(logs):
    passed = failed = attacks = defended = served = 0
    for entry in os.listdir(logs):
        with open(os.path.join(logs, entry), errors="replace") as f:
            for line in f:
                m = re.match(r"test result: \w+\. (\d+) passed; (\d+) failed", line)
                if m:
                    passed += int(m[1])
                    failed += int(m[2])
                m = re.match(r"adversarial: (\d+) attacks, (\d+) refused or survived, (\d+) served",
                             line)
                if m:
                    attacks += int(m[1])
                    defended += int(m[2])
                    served += int(m[3])
    return (f"{passed} passed, {failed} failed; adversarial: {attacks} attacks, "
            f"{defended} refused or survived, {served} served")


def main():
    extra = sys.argv[1:]
    began = time.monotonic()
    logs = tempfile.mkdtemp(prefix="selfdump-tests.")
    missing = programs()
    events = queue.Queue()
    threading.Thread(target=build, args=(events,), daemon=True).start()

    exe_of, waiting, running, failed = {}, [], [], []
    built = False

    def rank(name):
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    while not built or waiting or running:
        try:
            event = events.get(timeout=0.05)
        except queue.Empty:
            event = None
        if event and event[0] == "built":
            _, kind, name, exe, test = event
            if not test:  # (the binary is built twice: itself, and its unit tests)
                missing.discard((kind, name))
            if test and kind != "bench":
                name = name + ("" if kind == "test" else "-" + kind)
                exe_of[name] = exe
                if name not in ALONE:
                    waiting.append(name)
        elif event and event[0] == "done":
            built = True
            print(f"run-tests: built in {time.monotonic() - began:.0f} s", flush=True)
            if event[1] != 0:
                print("run-tests: cargo could not build every target (above)", flush=True)
                failed.append("build")
                waiting.clear()
            else:
                waiting.append("doctests")
        for job in list(running):
            status = job.process.poll()
            if status is None:
                continue
            running.remove(job)
            verdict = "ok" if status == 0 else f"FAILED (exit {status})"
            print(f"  {verdict:<8} {job.name:<28} {time.monotonic() - job.started:4.0f} s",
                  flush=True)
            if status != 0:
                failed.append(job.name)
        # the tests run the binary and the examples: none starts before they are built
        waiting.sort(key=rank)
        while waiting and len(running) < JOBS and not missing:
            name = waiting.pop(0)
            argv, env = command(name, exe_of, extra)
            running.append(Job(name, argv, env, logs))
        if built and missing and not running:
            break

    alone = [n for n in ALONE if n in exe_of] + (["adversarial-alone"] if "adversarial" in exe_of
                                                 else [])
    if "build" in failed:
        alone = []
    for name in alone:
        argv, env = command(name, exe_of, extra)
        job = Job(name, argv, env, logs)
        status = job.process.wait()
        verdict = "ok" if status == 0 else f"FAILED (exit {status})"
        print(f"  {verdict:<8} {name:<28} {time.monotonic() - job.started:4.0f} s (alone)",
              flush=True)
        if status != 0:
            failed.append(name)

    for name in failed:
        path = os.path.join(logs, name + ".log")
        if os.path.exists(path):
            print(f"\n==== {name} (failed) ====", flush=True)
            with open(path, errors="replace") as f:
                sys.stdout.write(f.read())
    print(f"\nrun-tests: {summary(logs)}; {len(exe_of)} binaries and the doc tests, "
          f"{JOBS} at a time, in {time.monotonic() - began:.0f} s", flush=True)
    subprocess.run(["rm", "-rf", logs])
    if failed:
        print(f"run-tests: failed: {' '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
