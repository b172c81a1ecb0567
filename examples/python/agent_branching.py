"""Agent branching: set up an instance once, snapshot it, branch it three ways, try a different
command in each branch, keep the best branch and delete the rest.

    python examples/python/agent_branching.py
"""

import os
import sys

from faas_sdk import FaaSClient

CANDIDATES = [
    "sort -n /work/data | head -1",  # the smallest
    "sort -n /work/data | tail -1",  # the largest
    "awk '{s += $1} END {print s}' /work/data",  # the sum
]

if not os.environ.get("FAAS_API_KEY"):
    sys.exit(
        "FAAS_API_KEY is not set: export an API key of the server, say the admin key it wrote\n"
        "on its first start: export FAAS_API_KEY=$(cat <data-dir>/admin.key)"
    )

# The client sends FAAS_API_KEY (its api_key default) with every request.
with FaaSClient(os.environ.get("FAAS_URL", "http://127.0.0.1:8080")) as client:
    base = client.create_instance(name="agent-base")
    try:
        setup = client.exec_instance(base.id, "mkdir -p /work && printf '5\\n42\\n7\\n' > /work/data")
        assert setup.exit_code == 0, setup.stderr
        snap = client.create_snapshot(base.id, name="after-setup")
        print(f"snapshot {snap.id}: {snap.size_bytes} bytes, {snap.took_ms} ms")

        branch = client.branch_snapshot(snap.id, count=len(CANDIDATES))
        scores = []
        for inst, command in zip(branch.instances, CANDIDATES):
            r = client.exec_instance(inst.id, command)
            # Each branch is independent: writing here is invisible to the others.
            client.exec_instance(inst.id, f"echo tried > /work/marker-{inst.id}")
            value = int(r.stdout.strip())
            print(f"branch {inst.id}: {command!r} -> {value}")
            scores.append((value, inst.id))
        best_value, best = max(scores)
        for _, inst_id in scores:
            if inst_id != best:
                client.delete_instance(inst_id)
        others = client.exec_instance(best, "ls /work").stdout.split()
        assert others == ["data", f"marker-{best}"], others
        print(f"kept branch {best} (score {best_value}); deleted the other {len(scores) - 1}")
        client.delete_instance(best)
        client.delete_snapshot(snap.id)
    finally:
        client.delete_instance(base.id)
print("agent branching ok")
