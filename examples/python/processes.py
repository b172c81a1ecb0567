"""Processes and files inside an instance with the Python SDK: start a job in the background,
follow its output from two places, talk to a process through its stdin, stop one with a
signal, and look at the files the job wrote.

    pip install ./sdk/python
    export FAAS_API_KEY=...                        # an API key of the server
    python examples/python/processes.py            # FAAS_URL defaults to http://127.0.0.1:8080
"""

import os
import sys
import time

from faas_sdk import FaaSClient

if not os.environ.get("FAAS_API_KEY"):
    sys.exit(
        "FAAS_API_KEY is not set: export an API key of the server, say the admin key it wrote\n"
        "on its first start: export FAAS_API_KEY=$(cat <data-dir>/admin.key)"
    )

# The client sends FAAS_API_KEY (its api_key default) with every request.
with FaaSClient(os.environ.get("FAAS_URL", "http://127.0.0.1:8080")) as client:
    inst = client.create_instance(metadata={"example": "processes"})
    try:
        # A background job: the call returns at once with its pid.
        t = time.monotonic()
        job = client.start_process(
            inst.id,
            "mkdir -p /work; for i in 1 2 3; do echo step $i | tee -a /work/log; sleep 0.3; done",
            tag="job",
        )
        print(f"started pid {job.pid} in {(time.monotonic() - t) * 1000:.1f} ms")
        print("running:", [(p.pid, p.tag) for p in client.list_processes(inst.id) if p.running])

        # Follow it; anyone who subscribes later still gets what it printed so far.
        out = b""
        for ev in client.process_events(inst.id, job.pid):
            if ev.kind == "exit":
                print("job exited with", ev.exit.exit_code)
                assert ev.exit.exit_code == 0
            else:
                out += ev.data
        replay = b"".join(e.data for e in client.process_events(inst.id, job.pid))
        assert out == replay == b"step 1\nstep 2\nstep 3\n", (out, replay)

        # A process that reads its stdin.
        cat = client.start_process(inst.id, ["cat"], stdin=True)
        client.send_stdin(inst.id, cat.pid, "hello through stdin\n")
        client.close_stdin(inst.id, cat.pid)
        echoed = b"".join(e.data for e in client.process_events(inst.id, cat.pid))
        print("cat said", echoed)
        assert echoed == b"hello through stdin\n"

        # Stop a long one.
        sleeper = client.start_process(inst.id, ["sleep", "300"])
        client.signal_process(inst.id, sleeper.pid, "SIGTERM")
        end = [e for e in client.process_events(inst.id, sleeper.pid) if e.kind == "exit"][0]
        print("sleep ended by signal", end.exit.signal)
        assert end.exit.signal == 15

        # The files the job left, as the instance sees them.
        for entry in client.list_dir(inst.id, "/work"):
            print(entry.permissions, entry.size, entry.path)
        assert client.stat(inst.id, "/work/log").size == len(out)
    finally:
        client.delete_instance(inst.id)
