"""Files through the stock e2b SDK: envd's /files (read, write, write_files, octet-stream and
gzip uploads) and its filesystem.Filesystem service (list, exists, get_info, make_dir, rename,
remove, and watch_dir: polled by the sync SDK, a stream for the async one)."""

import asyncio
import io
import time
from datetime import datetime

import pytest
from e2b import (
    AsyncSandbox,
    FileNotFoundException,
    FilesystemEventType,
    FileType,
)
from e2b.sandbox.filesystem.filesystem import WriteEntry


def test_write_and_read_text_and_bytes(sandbox):
    info = sandbox.files.write("/tmp/f/a.txt", "héllo wörld\n")
    assert info.path == "/tmp/f/a.txt"
    assert info.name == "a.txt"
    assert info.type == FileType.FILE
    assert sandbox.files.read("/tmp/f/a.txt") == "héllo wörld\n"

    blob = bytes(range(256)) * 64
    sandbox.files.write("/tmp/f/deep/er/b.bin", blob)
    assert sandbox.files.read("/tmp/f/deep/er/b.bin", format="bytes") == blob
    with sandbox.files.read("/tmp/f/deep/er/b.bin", format="stream") as stream:
        assert b"".join(stream) == blob

    # Overwritten, not appended; an empty file is a file.
    sandbox.files.write("/tmp/f/a.txt", "short")
    assert sandbox.files.read("/tmp/f/a.txt") == "short"
    sandbox.files.write("/tmp/f/empty", "")
    assert sandbox.files.read("/tmp/f/empty") == ""

    # What was written is what a process in the box sees.
    r = sandbox.commands.run("cat /tmp/f/a.txt")
    assert r.stdout == "short"


def test_write_files_and_streamed_uploads(sandbox):
    written = sandbox.files.write_files(
        [
            WriteEntry(path="/tmp/m/one.txt", data="one"),
            WriteEntry(path="/tmp/m/sub/two.bin", data=b"\x00\x01two"),
            WriteEntry(path="/tmp/m/three.txt", data=io.BytesIO(b"three")),
        ]
    )
    assert sorted(w.path for w in written) == [
        "/tmp/m/one.txt",
        "/tmp/m/sub/two.bin",
        "/tmp/m/three.txt",
    ]
    assert sandbox.files.read("/tmp/m/one.txt") == "one"
    assert sandbox.files.read("/tmp/m/sub/two.bin", format="bytes") == b"\x00\x01two"
    assert sandbox.files.read("/tmp/m/three.txt") == "three"

    # application/octet-stream: a file-like object, an iterable, gzip.
    sandbox.files.write("/tmp/m/io.bin", io.BytesIO(b"x" * 100_000))
    assert sandbox.files.read("/tmp/m/io.bin", format="bytes") == b"x" * 100_000
    sandbox.files.write("/tmp/m/iter.txt", iter([b"a", b"b", b"c"]))
    assert sandbox.files.read("/tmp/m/iter.txt") == "abc"
    sandbox.files.write("/tmp/m/gz.txt", "zipped " * 1000, gzip=True)
    assert sandbox.files.read("/tmp/m/gz.txt") == "zipped " * 1000

    # A few megabytes, both ways.
    big = bytes(range(251)) * 20_000
    sandbox.files.write("/tmp/m/big.bin", big)
    assert sandbox.files.read("/tmp/m/big.bin", format="bytes") == big


def test_relative_paths_are_under_the_home(sandbox):
    info = sandbox.files.write("rel/x.txt", "rel")
    assert info.path == "/root/rel/x.txt"
    assert sandbox.files.read("/root/rel/x.txt") == "rel"
    assert sandbox.files.read("~/rel/x.txt") == "rel"
    assert sandbox.files.exists("rel/x.txt")


def test_missing_files_and_directories(sandbox):
    with pytest.raises(FileNotFoundException):
        sandbox.files.read("/tmp/nope/missing.txt")
    with pytest.raises(FileNotFoundException):
        sandbox.files.get_info("/tmp/nope")
    with pytest.raises(FileNotFoundException):
        sandbox.files.list("/tmp/nope")
    sandbox.files.make_dir("/tmp/adir")
    with pytest.raises(Exception) as e:
        sandbox.files.read("/tmp/adir")
    assert "directory" in str(e.value)


def test_list_exists_and_get_info(sandbox):
    sandbox.files.write("/tmp/l/a.txt", "12345")
    sandbox.files.write("/tmp/l/sub/b.txt", "b")
    sandbox.commands.run("ln -s /tmp/l/a.txt /tmp/l/link")

    entries = {e.name: e for e in sandbox.files.list("/tmp/l")}
    assert set(entries) == {"a.txt", "sub", "link"}
    assert entries["a.txt"].type == FileType.FILE
    assert entries["a.txt"].path == "/tmp/l/a.txt"
    assert entries["a.txt"].size == 5
    assert entries["sub"].type == FileType.DIR
    assert entries["link"].type == FileType.SYMLINK
    assert entries["link"].symlink_target == "/tmp/l/a.txt"

    deep = {e.path for e in sandbox.files.list("/tmp/l", depth=2)}
    assert "/tmp/l/sub/b.txt" in deep

    assert sandbox.files.exists("/tmp/l/a.txt")
    assert sandbox.files.exists("/tmp/l/sub")
    assert not sandbox.files.exists("/tmp/l/nothing")

    info = sandbox.files.get_info("/tmp/l/a.txt")
    assert info.name == "a.txt"
    assert info.path == "/tmp/l/a.txt"
    assert info.type == FileType.FILE
    assert info.size == 5
    assert info.permissions.startswith("-rw")
    assert info.mode & 0o600 == 0o600
    assert info.owner == "root"
    assert isinstance(info.modified_time, datetime)
    assert abs(info.modified_time.timestamp() - time.time()) < 600
    assert info.symlink_target is None
    d = sandbox.files.get_info("/tmp/l/sub")
    assert d.type == FileType.DIR
    assert d.permissions.startswith("d")


def test_make_dir_rename_and_remove(sandbox):
    assert sandbox.files.make_dir("/tmp/d/x/y") is True
    assert sandbox.files.make_dir("/tmp/d/x/y") is False
    assert sandbox.files.get_info("/tmp/d/x").type == FileType.DIR

    sandbox.files.write("/tmp/d/old.txt", "moved")
    moved = sandbox.files.rename("/tmp/d/old.txt", "/tmp/d/new/place.txt")
    assert moved.path == "/tmp/d/new/place.txt"
    assert moved.name == "place.txt"
    assert moved.type == FileType.FILE
    assert not sandbox.files.exists("/tmp/d/old.txt")
    assert sandbox.files.read("/tmp/d/new/place.txt") == "moved"
    with pytest.raises(FileNotFoundException):
        sandbox.files.rename("/tmp/d/gone.txt", "/tmp/d/other.txt")

    sandbox.files.remove("/tmp/d/new/place.txt")
    assert not sandbox.files.exists("/tmp/d/new/place.txt")
    sandbox.files.remove("/tmp/d")  # a whole tree
    assert not sandbox.files.exists("/tmp/d")
    sandbox.files.remove("/tmp/d")  # what is not there is removed


def _wait_for(handle, want, timeout=10.0):
    """The events of `handle` until every (type, name) of `want` was seen."""
    seen = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        seen += handle.get_new_events()
        got = {(e.type, e.name) for e in seen}
        if want <= got:
            return seen
        time.sleep(0.2)
    raise AssertionError(f"wanted {want}, saw {[(e.type, e.name) for e in seen]}")


def test_watch_dir_polled(sandbox):
    sandbox.files.make_dir("/tmp/w")
    handle = sandbox.files.watch_dir("/tmp/w")
    try:
        sandbox.files.write("/tmp/w/new.txt", "hi")
        sandbox.files.rename("/tmp/w/new.txt", "/tmp/w/renamed.txt")
        sandbox.files.remove("/tmp/w/renamed.txt")
        _wait_for(
            handle,
            {
                (FilesystemEventType.CREATE, "new.txt"),
                (FilesystemEventType.RENAME, "new.txt"),
                (FilesystemEventType.CREATE, "renamed.txt"),
                (FilesystemEventType.REMOVE, "renamed.txt"),
            },
        )
        # Taken events are not given again.
        assert handle.get_new_events() == []
    finally:
        handle.stop()
    with pytest.raises(Exception):
        handle.get_new_events()


def test_watch_dir_recursive_polled(sandbox):
    sandbox.files.make_dir("/tmp/wr/sub")
    handle = sandbox.files.watch_dir("/tmp/wr", recursive=True)
    try:
        sandbox.files.write("/tmp/wr/sub/deep.txt", "x")
        _wait_for(handle, {(FilesystemEventType.CREATE, "sub/deep.txt")})
    finally:
        handle.stop()


def test_watch_dir_of_a_missing_directory(sandbox):
    with pytest.raises(FileNotFoundException):
        sandbox.files.watch_dir("/tmp/not-there")


def test_watch_dir_streamed_async():
    async def run():
        sbx = await AsyncSandbox.create(timeout=300)
        try:
            await sbx.files.make_dir("/tmp/ws")
            events = []
            got = asyncio.Event()

            def on_event(e):
                events.append(e)
                if (e.type, e.name) == (FilesystemEventType.WRITE, "s.txt"):
                    got.set()

            handle = await sbx.files.watch_dir("/tmp/ws", on_event)
            try:
                await sbx.files.write("/tmp/ws/s.txt", "streamed")
                await asyncio.wait_for(got.wait(), 10)
            finally:
                await handle.stop()
            assert (FilesystemEventType.CREATE, "s.txt") in {
                (e.type, e.name) for e in events
            }
        finally:
            await sbx.kill()

    asyncio.run(run())
