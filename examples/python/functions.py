"""Functions: deploy a python handler, invoke it synchronously and through the async queue.

    python examples/python/functions.py
"""

import os
import sys
import uuid

from faas_sdk import FaaSClient

HANDLER = '''
def handler(event, context):
    print("got", event)
    return {"sum": event["a"] + event["b"], "invocation": context.invocation_id}
'''

if not os.environ.get("FAAS_API_KEY"):
    sys.exit(
        "FAAS_API_KEY is not set: export an API key of the server, say the admin key it wrote\n"
        "on its first start: export FAAS_API_KEY=$(cat <data-dir>/admin.key)"
    )

# The client sends FAAS_API_KEY (its api_key default) with every request.
with FaaSClient(os.environ.get("FAAS_URL", "http://127.0.0.1:8080")) as client:
    name = f"example-add-{uuid.uuid4().hex[:6]}"
    fn = client.deploy_function(name, "python", code=HANDLER, handler="main.handler")
    print(f"deployed {fn.name} v{fn.version}")
    try:
        first = client.invoke_function(name, {"a": 2, "b": 3})
        second = client.invoke_function(name, {"a": 20, "b": 22})
        print(f"sync: {first.result['sum']} (cold {first.cold}, {first.duration_ms} ms), "
              f"{second.result['sum']} (cold {second.cold}, {second.duration_ms} ms)")
        assert first.result["sum"] == 5 and second.cold is False

        queued = client.invoke_function(name, {"a": 1, "b": 1}, async_=True, idempotency_key="once")
        done = client.wait_invocation(queued.invocation_id)
        print(f"async: {done.status} {done.result['sum']} after {done.attempts} attempt(s)")
        assert done.status == "succeeded" and done.result["sum"] == 2
    finally:
        client.delete_function(name)
print("functions ok")
