"""Through the unmodified e2b Python SDK, side by side with our own SDK, in the same run:

- `Sandbox.create()` then its first `commands.run("echo hi")` (a new sandbox each time), against
  our SDK's `create_instance` then `exec_instance("echo hi")` on the same image;
- `commands.run("echo hi")` in a running sandbox, against `exec_instance` in a running instance:
  in alternating blocks of 20 calls of each, then strictly alternating.

Run by `scripts/bench-e2b.sh [N]`, which starts a server; or set E2B_API_URL, E2B_SANDBOX_URL,
E2B_API_KEY (and FAAS_URL, FAAS_API_KEY, FAAS_IMAGE for our side) and run it with a Python
that has `e2b` and `faas_sdk`. Sandboxes are killed after the timed part.
"""

import os
import statistics
import sys
import time

from e2b import Sandbox
from faas_sdk import FaaSClient


BLOCK = 20


def pct(samples, p):
    s = sorted(samples)
    k = max(0, min(len(s) - 1, round(p / 100 * (len(s) - 1))))
    return s[k]


def row(name, samples):
    print(
        f"{name:<58} {len(samples):>5} {pct(samples, 50):>9.2f} {pct(samples, 95):>9.2f}"
        f" {pct(samples, 99):>9.2f} {statistics.mean(samples):>9.2f}"
    )


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t) * 1000, out


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    image = os.environ.get("FAAS_IMAGE")
    ours = FaaSClient(os.environ["FAAS_URL"], api_key=os.environ["FAAS_API_KEY"])
    e2b_cold, ours_cold = [], []
    for i in range(n + 3):
        # Interleaved, so the machine's noise falls on both alike; the first 3 warm up.
        def e2b_start():
            sbx = Sandbox.create(timeout=120)
            r = sbx.commands.run("echo hi")
            assert r.stdout == "hi\n", r
            return sbx

        def ours_start():
            inst = ours.create_instance(image=image)
            r = ours.exec_instance(inst.id, "echo hi")
            assert r.stdout == "hi\n", r
            return inst

        ms, sbx = timed(e2b_start)
        sbx.kill()
        if i >= 3:
            e2b_cold.append(ms)
        ms, inst = timed(ours_start)
        ours.delete_instance(inst.id)
        if i >= 3:
            ours_cold.append(ms)

    sbx = Sandbox.create(timeout=300)
    inst = ours.create_instance(image=image)

    def e2b_run():
        r = sbx.commands.run("echo hi")
        assert r.stdout == "hi\n"

    def ours_run():
        r = ours.exec_instance(inst.id, "echo hi")
        assert r.stdout == "hi\n"

    # In alternating blocks of BLOCK calls: each call follows one of its own kind, as in a
    # program's loop of commands, and the blocks alternate so the machine's noise falls on
    # both alike. Then strictly alternating calls, each after one of the other SDK's (on a
    # VM a call after another program's call pays for caches that program cooled).
    e2b_warm, ours_warm, e2b_alt, ours_alt = [], [], [], []
    try:
        for _ in range(10):
            e2b_run()
            ours_run()
        for b in range(0, runs, BLOCK):
            for samples, fn in ((e2b_warm, e2b_run), (ours_warm, ours_run)):
                for _ in range(min(BLOCK, runs - b)):
                    samples.append(timed(fn)[0])
        for _ in range(runs):
            e2b_alt.append(timed(e2b_run)[0])
            ours_alt.append(timed(ours_run)[0])
    finally:
        sbx.kill()
        ours.delete_instance(inst.id)

    print(f"\n{'case':<58} {'runs':>5} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} {'mean ms':>9}")
    row("e2b SDK: Sandbox.create() + first commands.run", e2b_cold)
    row("faas SDK: create_instance + first exec_instance", ours_cold)
    row("e2b SDK: commands.run in a running sandbox", e2b_warm)
    row("faas SDK: exec_instance in a running instance", ours_warm)
    row("e2b SDK: commands.run, strictly alternating", e2b_alt)
    row("faas SDK: exec_instance, strictly alternating", ours_alt)


if __name__ == "__main__":
    main()
