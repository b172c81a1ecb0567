"""The stock e2b SDK (PyPI `e2b`), unmodified, against a self-hosted faas server.

    export E2B_API_URL=http://127.0.0.1:8080 E2B_SANDBOX_URL=http://127.0.0.1:8080
    export E2B_API_KEY=<a faas API key>
    python examples/e2b/quickstart.py
"""

from e2b import CommandExitException, Sandbox

sbx = Sandbox.create(timeout=120, metadata={"example": "quickstart"})
try:
    result = sbx.commands.run("echo hello from $(uname -s); echo oops >&2")
    print("stdout:", result.stdout.strip(), "| stderr:", result.stderr.strip())

    try:
        sbx.commands.run("exit 3")
    except CommandExitException as e:
        print("exit code:", e.exit_code)

    sbx.files.write("/tmp/notes/hello.txt", "written through envd\n")
    print("read back:", sbx.files.read("/tmp/notes/hello.txt").strip())
    print("listing:", [e.name for e in sbx.files.list("/tmp/notes")])
    print("running:", sbx.is_running())
finally:
    sbx.kill()
print("e2b quickstart ok")
