"""Quickstart: run commands and code in sandboxes with the Python SDK.

    pip install ./sdk/python
    export FAAS_API_KEY=...                        # an API key of the server
    python examples/python/quickstart.py            # FAAS_URL defaults to http://127.0.0.1:8080
"""

import os
import sys

from faas_sdk import FaaSClient, NotFoundError

if not os.environ.get("FAAS_API_KEY"):
    sys.exit(
        "FAAS_API_KEY is not set: export an API key of the server, say the admin key it wrote\n"
        "on its first start: export FAAS_API_KEY=$(cat <data-dir>/admin.key)"
    )

# The client sends FAAS_API_KEY (its api_key default) with every request.
with FaaSClient(os.environ.get("FAAS_URL", "http://127.0.0.1:8080")) as client:
    health = client.health_check()
    print(f"server {health.version}, backend {health.default_backend}")

    r = client.execute("echo hello from a sandbox; echo to stderr >&2; exit 3")
    print(f"exit {r.exit_code}, stdout {r.stdout!r}, stderr {r.stderr!r}, {r.duration_ms:.1f} ms")
    assert (r.exit_code, r.stdout) == (3, "hello from a sandbox\n")

    py = client.run_python("import sys; print(sum(range(10)), sys.version_info[:2])")
    print("python says", py.stdout.strip())
    assert py.stdout.startswith("45 ")

    js = client.run_javascript("console.log([1, 2, 3].map(x => x * 2).join(','))")
    assert js.stdout == "2,4,6\n"

    slow = client.execute("sleep 10", timeout_ms=200)
    print("timed out:", slow.timed_out)  # a result, not an exception
    assert slow.timed_out

    try:
        client.get_instance("does-not-exist")
    except NotFoundError as e:
        print(f"errors are typed: {type(e).__name__} {e.code}")
print("quickstart ok")
