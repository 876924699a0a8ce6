"""The official `e2b` SDK (pinned in requirements.txt) against `sandbox-emulator e2b`.

The SDK is pointed at the emulator the documented way: `E2B_API_URL` and `E2B_SANDBOX_URL` at
the emulator's one origin, any `E2B_API_KEY`. Commands really run (bubblewrap) and files really
land in the sandbox. One scenario walks the issue's list: create with metadata and envs, streamed
stdout, a failing command, a background command killed, text and binary files, set-timeout, list
by metadata, pause and connect back, a port reached through the emulator, kill, not-found.
"""

import asyncio
import socket
import time
import urllib.error
import urllib.request

import pytest

from e2b import (
    AsyncSandbox,
    CommandExitException,
    FilesystemEventType,
    FileType,
    NotFoundException,
    Sandbox,
    SandboxQuery,
    SandboxState,
)
from e2b.exceptions import AuthenticationException


@pytest.fixture
def e2b(emulator, monkeypatch):
    """A fresh emulator and the SDK's environment pointing at it."""
    e = emulator("e2b")
    monkeypatch.setenv("E2B_API_KEY", "e2b_test_key")
    monkeypatch.setenv("E2B_API_URL", e.url)
    monkeypatch.setenv("E2B_SANDBOX_URL", e.url)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    return e


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, headers, timeout=3):
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (urllib.error.URLError, ConnectionError, socket.timeout):
        return None, b""


def eventually(what, check, limit=15.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


def test_sdk_scenario(e2b):
    sbx = Sandbox.create(metadata={"owner": "alice", "suite": "sdk"}, envs={"FOO": "bar"}, timeout=120)
    try:
        assert len(sbx.sandbox_id) == 20 and sbx.sandbox_id.isalnum()

        # A command; stdout arrives through the callback while it runs.
        chunks = []
        started = time.monotonic()
        r = sbx.commands.run(
            "echo first; sleep 1; echo $FOO", on_stdout=lambda s: chunks.append((time.monotonic() - started, s))
        )
        assert r.exit_code == 0
        assert r.stdout == "first\nbar\n"
        assert "".join(s for _, s in chunks) == "first\nbar\n"
        assert chunks[0][0] < 0.9, f"the first chunk came at {chunks[0][0]:.2f}s: not streamed"

        # envs and cwd of one command.
        r = sbx.commands.run("echo $ONE; pwd", envs={"ONE": "1"}, cwd="/tmp")
        assert r.stdout == "1\n/tmp\n"

        # A failing command: exit code and stderr arrive.
        with pytest.raises(CommandExitException) as failed:
            sbx.commands.run("echo oops >&2; exit 3")
        assert failed.value.exit_code == 3
        assert failed.value.stderr == "oops\n"

        # A command timeout kills the command.
        with pytest.raises(Exception) as timed_out:
            sbx.commands.run("sleep 30", timeout=1)
        assert "deadline" in str(timed_out.value).lower() or "timeout" in type(timed_out.value).__name__.lower()

        # Background: listed while it runs, killed, gone.
        bg = sbx.commands.run("sleep 60", background=True)
        assert bg.pid > 0
        assert any(p.pid == bg.pid for p in sbx.commands.list())
        assert bg.kill() is True
        eventually("the killed process to leave the list", lambda: all(p.pid != bg.pid for p in sbx.commands.list()))
        assert sbx.commands.kill(bg.pid) is False

        # Interactive stdin: each line is answered (in a file: the sync SDK hands a background
        # command's output over only in `wait`) while stdin is still open; closing it ends the
        # command.
        chat = sbx.commands.run(
            "while read -r l; do echo \"got $l\" >> /tmp/chat.txt; done; echo bye",
            background=True,
            stdin=True,
        )
        for line in ("one", "two"):
            sbx.commands.send_stdin(chat.pid, f"{line}\n")
            eventually(
                f"the answer to {line}",
                lambda: sbx.files.exists("/tmp/chat.txt")
                and f"got {line}\n" in sbx.files.read("/tmp/chat.txt"),
            )
        # The same over one input stream: each chunk is answered before the next is yielded.
        def chunks():
            for line in ("three", "four"):
                yield f"{line}\n"
                eventually(
                    f"the streamed answer to {line}",
                    lambda: f"got {line}\n" in sbx.files.read("/tmp/chat.txt"),
                )

        sbx.commands.stream_input(chat.pid, chunks())
        sbx.commands.close_stdin(chat.pid)
        done = chat.wait()
        assert (done.exit_code, done.stdout) == (0, "bye\n"), done
        assert sbx.files.read("/tmp/chat.txt") == "got one\ngot two\ngot three\ngot four\n"

        # Files: text and binary, list, stat, mkdir, remove, not-found.
        info = sbx.files.write("/home/user/hello.txt", "hello from the sdk\n")
        assert info.path == "/home/user/hello.txt"
        assert sbx.files.read("/home/user/hello.txt") == "hello from the sdk\n"
        blob = bytes(range(256)) * 16
        sbx.files.write("/home/user/data/blob.bin", blob)
        assert sbx.files.read("/home/user/data/blob.bin", format="bytes") == blob
        assert sbx.commands.run("cat hello.txt").stdout == "hello from the sdk\n"
        entries = {e.name: e for e in sbx.files.list("/home/user")}
        assert entries["hello.txt"].type == FileType.FILE
        assert entries["hello.txt"].size == len("hello from the sdk\n")
        assert entries["data"].type == FileType.DIR
        assert sbx.files.exists("/home/user/hello.txt")
        assert not sbx.files.exists("/home/user/nope.txt")
        assert sbx.files.make_dir("/home/user/newdir") is True
        assert sbx.files.make_dir("/home/user/newdir") is False
        sbx.files.write("/home/user/move-me.txt", "moved\n")
        moved = sbx.files.rename("/home/user/move-me.txt", "/home/user/newdir/hi.txt")
        assert (moved.name, moved.path, moved.type) == ("hi.txt", "/home/user/newdir/hi.txt", FileType.FILE)
        assert sbx.files.read("/home/user/newdir/hi.txt") == "moved\n"
        assert not sbx.files.exists("/home/user/move-me.txt")
        with pytest.raises(NotFoundException):
            sbx.files.rename("/home/user/move-me.txt", "/home/user/again.txt")
        # Watching (recursive): what changed between two looks, names relative to the directory.
        sbx.files.make_dir("/home/user/watched/sub")
        watch = sbx.files.watch_dir("/home/user/watched", recursive=True)
        sbx.files.write("/home/user/watched/a.txt", "1")
        sbx.files.write("/home/user/watched/sub/b.txt", "2")
        seen = {(e.name, e.type) for e in watch.get_new_events()}
        assert seen == {("a.txt", FilesystemEventType.CREATE), ("sub/b.txt", FilesystemEventType.CREATE)}, seen
        sbx.files.write("/home/user/watched/a.txt", "11")
        sbx.files.remove("/home/user/watched/sub/b.txt")
        seen = {(e.name, e.type) for e in watch.get_new_events()}
        assert seen == {("a.txt", FilesystemEventType.WRITE), ("sub/b.txt", FilesystemEventType.REMOVE)}, seen
        assert watch.get_new_events() == []
        watch.stop()
        sbx.files.remove("/home/user/data")
        assert not sbx.files.exists("/home/user/data/blob.bin")
        with pytest.raises(NotFoundException):
            sbx.files.read("/home/user/missing.txt")

        # Timeout and info.
        sbx.set_timeout(600)
        info = sbx.get_info()
        assert info.metadata == {"owner": "alice", "suite": "sdk"}
        remaining = (info.end_at - info.started_at).total_seconds()
        assert 590 <= remaining <= 610, remaining

        # List by metadata: ours only.
        other = Sandbox.create(metadata={"owner": "bob"})
        try:
            found = Sandbox.list(query=SandboxQuery(metadata={"owner": "alice"})).next_items()
            assert [s.sandbox_id for s in found] == [sbx.sandbox_id]
            everyone = Sandbox.list(query=SandboxQuery(state=[SandboxState.RUNNING])).next_items()
            assert {s.sandbox_id for s in everyone} >= {sbx.sandbox_id, other.sandbox_id}
            # Paging: one per page, X-Next-Token carries on.
            pager = Sandbox.list(limit=1)
            first = pager.next_items()
            assert len(first) == 1 and pager.has_next
            second = pager.next_items()
            assert len(second) == 1 and second[0].sandbox_id != first[0].sandbox_id
        finally:
            assert other.kill() is True

        # Pause, then connect back: state and files survive.
        assert sbx.pause() is True
        assert Sandbox.get_info(sbx.sandbox_id).state == SandboxState.PAUSED
        assert not sbx.is_running()
        sbx = Sandbox.connect(sbx.sandbox_id)
        assert sbx.is_running()
        assert sbx.files.read("/home/user/hello.txt") == "hello from the sdk\n"
        assert sbx.commands.run("echo back").stdout == "back\n"

        # A server in the sandbox, reached through the emulator by headers and by Host.
        port = free_port()
        sbx.files.write("/home/user/www/index.txt", "served\n")
        server = sbx.commands.run(f"cd www && exec python3 -m http.server {port}", background=True)
        host = sbx.get_host(port)
        assert host == f"{port}-{sbx.sandbox_id}.e2b.app"
        by_headers = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": str(port)}
        status, body = eventually(
            "the server in the sandbox", lambda: (lambda r: r if r[0] == 200 else None)(http_get(e2b.url + "/index.txt", by_headers))
        )
        assert body == b"served\n"
        assert http_get(e2b.url + "/index.txt", {"Host": host}) == (200, b"served\n")
        server.kill()
    finally:
        killed = sbx.kill()
    assert killed is True
    assert Sandbox.kill(sbx.sandbox_id) is False
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sbx.sandbox_id)
    with pytest.raises(NotFoundException):
        Sandbox.connect(sbx.sandbox_id)


def test_watch_dir_streams_changes(e2b):
    """The async SDK's `watch_dir` (a `WatchDir` server stream): changes arrive as they happen."""

    async def scenario():
        sbx = await AsyncSandbox.create()
        try:
            await sbx.files.make_dir("/home/user/w")
            events = []
            handle = await sbx.files.watch_dir("/home/user/w", on_event=events.append)
            await sbx.files.write("/home/user/w/x.txt", "x")
            deadline = time.monotonic() + 10
            while ("x.txt", FilesystemEventType.CREATE) not in {(e.name, e.type) for e in events}:
                assert time.monotonic() < deadline, f"no CREATE for x.txt: {events}"
                await asyncio.sleep(0.05)
            await handle.stop()
        finally:
            await sbx.kill()

    asyncio.run(scenario())


def test_api_key_and_access_token_are_checked(e2b, monkeypatch):
    sbx = Sandbox.create()
    try:
        # envd refuses a wrong per-sandbox token.
        status, _ = http_get(
            e2b.url + "/files?path=%2Fhome%2Fuser",
            {"E2b-Sandbox-Id": sbx.sandbox_id, "X-Access-Token": "wrong"},
        )
        assert status == 401
    finally:
        sbx.kill()
    # The control plane refuses a request without a key.
    status, _ = http_get(e2b.url + "/v2/sandboxes", {})
    assert status == 401


def test_timeouts_really_expire(e2b):
    sbx = Sandbox.create(timeout=1)
    sbx.commands.run("sleep 60", background=True)
    eventually("the sandbox to expire", lambda: not Sandbox.list().next_items(), limit=10)
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sbx.sandbox_id)
