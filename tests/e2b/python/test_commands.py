"""`sandbox.commands` and `sandbox.pty` of the stock e2b SDK: envd's `process.Process`."""

import threading
import time

import pytest
from e2b import CommandExitException, NotFoundException, PtySize, TimeoutException


def wait_for(cond, what, timeout=10):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_run_keeps_stdout_and_stderr_apart(sandbox):
    r = sandbox.commands.run("echo out; echo err >&2")
    assert r.exit_code == 0
    assert r.stdout == "out\n"
    assert r.stderr == "err\n"
    assert r.error is None


def test_run_streams_to_callbacks(sandbox):
    out, err = [], []
    sandbox.commands.run(
        "for i in 1 2 3; do echo $i; done; echo e >&2",
        on_stdout=out.append,
        on_stderr=err.append,
    )
    assert "".join(out) == "1\n2\n3\n"
    assert "".join(err) == "e\n"


def test_a_non_zero_exit_raises_with_its_code_and_output(sandbox):
    with pytest.raises(CommandExitException) as e:
        sandbox.commands.run("echo partial; echo bad >&2; exit 3")
    assert e.value.exit_code == 3
    assert e.value.stdout == "partial\n"
    assert e.value.stderr == "bad\n"
    assert e.value.error == "exit status 3"


def test_envs_and_cwd(sandbox):
    r = sandbox.commands.run('echo "$GREETING"; pwd', envs={"GREETING": "hello there"}, cwd="/tmp")
    assert r.stdout == "hello there\n/tmp\n"


def test_binary_and_large_output(sandbox):
    r = sandbox.commands.run("head -c 300000 /dev/zero | tr '\\0' a")
    assert r.stdout == "a" * 300_000


def test_timeout_kills_the_command(sandbox):
    start = time.monotonic()
    with pytest.raises(TimeoutException):
        sandbox.commands.run("sleep 30; echo never", timeout=2)
    assert time.monotonic() - start < 15
    # The process was killed, not left behind.
    deadline = time.monotonic() + 5
    while any("sleep 30" in " ".join(p.args) for p in sandbox.commands.list()):
        assert time.monotonic() < deadline, "the timed-out command still runs"
        time.sleep(0.2)


def test_the_timeout_is_the_process_lifetime_without_a_client(sandbox):
    h = sandbox.commands.run("sleep 30", background=True, timeout=2)
    pid = h.pid
    h.disconnect()
    assert pid in [p.pid for p in sandbox.commands.list()]
    wait_for(lambda: pid not in [p.pid for p in sandbox.commands.list()], "the kill", 10)


def test_no_timeout(sandbox):
    assert sandbox.commands.run("sleep 0.2; echo ok", timeout=0).stdout == "ok\n"


def test_background_command_and_wait(sandbox):
    h = sandbox.commands.run("sleep 1; echo done", background=True)
    assert h.pid > 0
    r = h.wait()
    assert r.exit_code == 0
    assert r.stdout == "done\n"


def test_background_command_outlives_its_handle_and_is_reached_with_connect(sandbox):
    h = sandbox.commands.run("echo early; sleep 2; echo late", background=True)
    pid = h.pid
    h.disconnect()
    time.sleep(0.5)
    assert pid in [p.pid for p in sandbox.commands.list()]
    again = sandbox.commands.connect(pid)
    assert again.pid == pid
    r = again.wait()
    assert r.exit_code == 0
    # The output kept from before the connect comes first.
    assert r.stdout == "early\nlate\n"


def test_send_stdin_and_close_it(sandbox):
    h = sandbox.commands.run("read line; echo got $line; cat", background=True, stdin=True)
    sandbox.commands.send_stdin(h.pid, "hello\n")
    h.send_stdin(b"more bytes\n")
    h.close_stdin()
    r = h.wait()
    assert r.stdout == "got hello\nmore bytes\n"


def test_stream_input(sandbox):
    h = sandbox.commands.run("cat", background=True, stdin=True)
    sandbox.commands.stream_input(h.pid, ["a", b"b", "c\n"])
    sandbox.commands.close_stdin(h.pid)
    assert h.wait().stdout == "abc\n"


def test_kill_and_list(sandbox):
    h = sandbox.commands.run("sleep 60", background=True)
    procs = {p.pid: p for p in sandbox.commands.list()}
    assert h.pid in procs
    p = procs[h.pid]
    assert p.cmd == "/bin/bash"
    assert p.args == ["-l", "-c", "sleep 60"]
    assert p.tag is None

    assert sandbox.commands.kill(h.pid) is True
    with pytest.raises(CommandExitException) as e:
        h.wait()
    assert e.value.exit_code == -1
    assert e.value.error == "signal: killed"
    assert h.pid not in [p.pid for p in sandbox.commands.list()]
    # An ended (or unknown) process is not there to kill.
    assert sandbox.commands.kill(h.pid) is False
    assert sandbox.commands.kill(999_999) is False


def test_list_shows_envs_and_cwd(sandbox):
    h = sandbox.commands.run("sleep 60", background=True, envs={"K": "v"}, cwd="/tmp")
    p = next(p for p in sandbox.commands.list() if p.pid == h.pid)
    assert p.envs == {"K": "v"}
    assert p.cwd == "/tmp"
    h.kill()


def test_handle_kill(sandbox):
    h = sandbox.commands.run("sleep 60", background=True)
    assert h.kill() is True
    with pytest.raises(CommandExitException):
        h.wait()


def test_unknown_pids_are_not_found(sandbox):
    with pytest.raises(NotFoundException):
        sandbox.commands.send_stdin(999_999, "x")
    with pytest.raises(NotFoundException):
        sandbox.commands.connect(999_999)


def test_pty_create_input_resize_and_exit(sandbox):
    out = bytearray()
    pty = sandbox.pty.create(PtySize(rows=24, cols=80))
    assert pty.pid > 0
    ended = []

    def wait():
        try:
            pty.wait(on_pty=out.extend)
        except Exception as e:  # the exit code comes as an exception
            ended.append(e)

    t = threading.Thread(target=wait)
    t.start()
    sandbox.pty.send_stdin(pty.pid, b"stty size; echo pty-$((6*7))\n")
    wait_for(lambda: b"pty-42" in out, "the first command's output")
    assert b"24 80" in out
    sandbox.pty.resize(pty.pid, PtySize(rows=40, cols=120))
    sandbox.pty.send_stdin(pty.pid, b"stty size; exit 5\n")
    t.join(timeout=20)
    assert not t.is_alive()
    assert b"40 120" in out
    assert isinstance(ended[0], CommandExitException), ended
    assert ended[0].exit_code == 5


def test_pty_kill(sandbox):
    pty = sandbox.pty.create(PtySize(rows=24, cols=80))
    assert pty.pid in [p.pid for p in sandbox.commands.list()]
    assert sandbox.pty.kill(pty.pid) is True
    with pytest.raises(CommandExitException) as e:
        pty.wait()
    assert e.value.exit_code == -1
    assert sandbox.pty.kill(pty.pid) is False


def test_concurrent_commands(sandbox):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: sandbox.commands.run(f"echo {i}").stdout, range(32)))
    assert results == [f"{i}\n" for i in range(32)]


def test_the_async_sdk():
    import asyncio

    from e2b import AsyncSandbox

    async def main():
        sbx = await AsyncSandbox.create(timeout=120)
        try:
            r = await sbx.commands.run("echo hi; echo e >&2")
            assert (r.stdout, r.stderr) == ("hi\n", "e\n")
            h = await sbx.commands.run("cat", background=True, stdin=True)
            await sbx.commands.send_stdin(h.pid, "abc")
            await sbx.commands.close_stdin(h.pid)
            assert (await h.wait()).stdout == "abc"
            with pytest.raises(CommandExitException) as e:
                await sbx.commands.run("exit 4")
            assert e.value.exit_code == 4
            h = await sbx.commands.run("sleep 30", background=True)
            assert await sbx.commands.kill(h.pid) is True
            with pytest.raises(CommandExitException):
                await h.wait()
            assert await sbx.commands.kill(h.pid) is False
        finally:
            await sbx.kill()

    asyncio.run(main())
