"""The official `daytona` SDK (pinned 0.226.1) against `sandbox-emulator daytona`.

The SDK is pointed at the emulator the way its users point it anywhere: `DAYTONA_API_URL`
(`http://127.0.0.1:PORT/api`) and any `DAYTONA_API_KEY`. Commands really run in localbox
(bubblewrap), so every output checked here was produced by a real process.
"""

import asyncio
import socket
import time
import urllib.error
import urllib.request

import pytest
from daytona import (
    CreateSandboxFromSnapshotParams,
    Daytona,
    DaytonaConfig,
    DaytonaNotFoundError,
    ListSandboxesQuery,
    SessionExecuteRequest,
)
from daytona.common.errors import DaytonaError, DaytonaTimeoutError


@pytest.fixture
def daytona(emulator, monkeypatch):
    e = emulator("daytona")
    monkeypatch.setenv("DAYTONA_API_URL", e.url + "/api")
    monkeypatch.setenv("DAYTONA_API_KEY", "any-key")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    return Daytona()


def test_bearer_key_is_required(emulator):
    e = emulator("daytona", "--isolation", "none")
    assert list(Daytona(DaytonaConfig(api_key="k", api_url=e.url + "/api")).list()) == []
    # Without a key the emulator answers 401, as the service does.
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(e.url + "/api/sandbox", timeout=5)
    assert err.value.code == 401


def test_sdk_scenario(daytona):
    sb = daytona.create(CreateSandboxFromSnapshotParams(labels={"team": "blue"}, env_vars={"GREETING": "hello"}))
    try:
        assert sb.state.value == "started"
        assert sb.labels["team"] == "blue"
        assert sb.labels["code-toolbox-language"] == "python"

        # exec: output, exit code, cwd, env (request and sandbox), timeout
        r = sb.process.exec("echo $GREETING $EXTRA; exit 3", env={"EXTRA": "world"})
        assert (r.exit_code, r.result) == (3, "hello world\n")
        sb.process.exec("mkdir -p sub/dir")
        r = sb.process.exec("pwd", cwd="/home/daytona/sub/dir")
        assert r.exit_code == 0 and r.result.strip().endswith("/sub/dir")
        r = sb.process.exec("echo out; echo err >&2")
        assert r.result == "out\nerr\n"
        started = time.monotonic()
        with pytest.raises(DaytonaTimeoutError):
            sb.process.exec("sleep 30", timeout=1)
        assert time.monotonic() - started < 10

        r = sb.process.code_run("import sys\nprint(6 * 7)\nprint(sys.argv[1:])")
        assert r.exit_code == 0 and r.result == "42\n[]\n"

        # a session: async command, logs streamed through the async log API
        sb.process.create_session("s1")
        cmd = sb.process.execute_session_command(
            "s1",
            SessionExecuteRequest(command="echo one; echo warn >&2; sleep 1; echo two", run_async=True),
        )
        chunks = []
        asyncio.run(
            sb.process.get_session_command_logs_async(
                "s1", cmd.cmd_id, lambda s: chunks.append(("out", s)), lambda s: chunks.append(("err", s))
            )
        )
        assert "".join(s for k, s in chunks if k == "out") == "one\ntwo\n"
        assert "".join(s for k, s in chunks if k == "err") == "warn\n"
        assert sb.process.get_session_command("s1", cmd.cmd_id).exit_code == 0
        logs = sb.process.get_session_command_logs("s1", cmd.cmd_id)
        assert (logs.stdout, logs.stderr) == ("one\ntwo\n", "warn\n")
        sync = sb.process.execute_session_command("s1", SessionExecuteRequest(command="echo sync"))
        assert (sync.exit_code, sync.stdout) == (0, "sync\n")
        assert [c.id for c in sb.process.get_session("s1").commands] == [cmd.cmd_id, sync.cmd_id]
        # input to a running command (a newline added, echoed into its log); refused once it ended
        ask = sb.process.execute_session_command(
            "s1", SessionExecuteRequest(command='read -r name; echo "hi $name"', run_async=True)
        )
        sb.process.send_session_command_input("s1", ask.cmd_id, "ada")
        deadline = time.monotonic() + 10
        while sb.process.get_session_command("s1", ask.cmd_id).exit_code is None:
            assert time.monotonic() < deadline, "the command did not get its input"
            time.sleep(0.05)
        assert sb.process.get_session_command_logs("s1", ask.cmd_id).stdout == "ada\nhi ada\n"
        with pytest.raises(DaytonaError) as late:
            sb.process.send_session_command_input("s1", ask.cmd_id, "late")
        assert late.value.status_code == 410 and "completed" in str(late.value), late.value
        # a daemon error the SDK parses into its model (path and method included)
        with pytest.raises(DaytonaError) as bad:
            sb.process.send_session_command_input("s1", "no-such-command", "x")
        assert bad.value.status_code == 404, bad.value
        sb.process.delete_session("s1")

        # files: binary intact, list, info, folder, delete, missing → not found
        blob = bytes(range(256)) * 64
        sb.fs.upload_file(blob, "/home/daytona/data.bin")
        assert sb.fs.download_file("/home/daytona/data.bin") == blob
        sb.fs.create_folder("/home/daytona/folder", "755")
        names = {f.name: f for f in sb.fs.list_files("/home/daytona")}
        assert names["data.bin"].size == len(blob) and not names["data.bin"].is_dir
        assert names["folder"].is_dir
        info = sb.fs.get_file_info("/home/daytona/data.bin")
        assert info.size == len(blob)
        # move: into a folder, then refused onto an existing file and from a missing source
        sb.fs.move_files("/home/daytona/data.bin", "/home/daytona/folder/moved.bin")
        assert sb.fs.download_file("/home/daytona/folder/moved.bin") == blob
        sb.fs.upload_file(b"x", "/home/daytona/other.bin")
        with pytest.raises(DaytonaError) as taken:
            sb.fs.move_files("/home/daytona/other.bin", "/home/daytona/folder/moved.bin")
        assert taken.value.status_code == 409, taken.value
        with pytest.raises(DaytonaNotFoundError):
            sb.fs.move_files("/home/daytona/data.bin", "/home/daytona/again.bin")
        sb.fs.move_files("/home/daytona/folder/moved.bin", "/home/daytona/data.bin")
        sb.fs.delete_file("/home/daytona/data.bin")

        # find (text lines, binary files skipped), search (globs), replace (a result per file)
        sb.fs.create_folder("/home/daytona/src/lib", "755")
        sb.fs.upload_file(b"let a = 1;\nlet b = TODO;\n", "/home/daytona/src/main.rs")
        sb.fs.upload_file(b"// TODO later\n", "/home/daytona/src/lib/util.rs")
        sb.fs.upload_file(b"TODO\x00binary", "/home/daytona/src/blob.bin")
        found = sorted((m.file, m.line, m.content) for m in sb.fs.find_files("/home/daytona/src", "TODO"))
        assert found == [
            ("/home/daytona/src/lib/util.rs", 1, "// TODO later"),
            ("/home/daytona/src/main.rs", 2, "let b = TODO;"),
        ], found
        assert sorted(sb.fs.search_files("/home/daytona/src", "**/*.rs").files) == [
            "/home/daytona/src/lib/util.rs",
            "/home/daytona/src/main.rs",
        ]
        assert sb.fs.search_files("/home/daytona/src", "*.rs").files == ["/home/daytona/src/main.rs"]
        results = sb.fs.replace_in_files(
            ["/home/daytona/src/main.rs", "/home/daytona/src/missing.rs"], "TODO", "2"
        )
        assert [(r.file, r.success) for r in results] == [
            ("/home/daytona/src/main.rs", True),
            ("/home/daytona/src/missing.rs", False),
        ]
        assert sb.fs.download_file("/home/daytona/src/main.rs") == b"let a = 1;\nlet b = 2;\n"
        with pytest.raises(DaytonaNotFoundError):
            sb.fs.download_file("/home/daytona/data.bin")

        # a preview link reaches a server started in the sandbox
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        sb.fs.upload_file(b"served from the sandbox", "/home/daytona/index.txt")
        sb.process.create_session("web")
        sb.process.execute_session_command(
            "web", SessionExecuteRequest(command=f"python3 -m http.server {port}", run_async=True)
        )
        link = sb.get_preview_link(port)
        body = None
        for _ in range(100):
            try:
                req = urllib.request.Request(link.url + "/index.txt", headers={"X-Daytona-Preview-Token": link.token})
                with urllib.request.urlopen(req, timeout=2) as resp:
                    body = resp.read()
                break
            except OSError:
                time.sleep(0.1)
        assert body == b"served from the sandbox"
        sb.process.delete_session("web")

        # labels, autostop, list by labels
        sb.set_labels({"team": "red", "tier": "x"})
        assert daytona.get(sb.id).labels["team"] == "red"
        sb.set_autostop_interval(30)
        assert daytona.get(sb.id).auto_stop_interval == 30
        other = daytona.create(CreateSandboxFromSnapshotParams(labels={"team": "green"}))
        assert [s.id for s in daytona.list(ListSandboxesQuery(labels={"team": "red"}))] == [sb.id]
        assert {s.id for s in daytona.list()} == {sb.id, other.id}
        daytona.delete(other)

        # stop and start keep the files
        sb.stop()
        assert sb.state.value == "stopped"
        sb.start()
        assert sb.state.value == "started"
        assert sb.fs.download_file("/home/daytona/index.txt") == b"served from the sandbox"
    finally:
        daytona.delete(sb, timeout=30, wait=True)
    with pytest.raises(DaytonaNotFoundError):
        daytona.get(sb.id)


def test_missing_sandbox_is_not_found(daytona):
    with pytest.raises(DaytonaNotFoundError):
        daytona.get("00000000-0000-4000-8000-00000000dead")


def test_slow_transitions_are_polled(daytona, emulator, monkeypatch):
    e = emulator("daytona", "--isolation", "none")
    req = urllib.request.Request(
        e.url + "/_emulator/daytona/transitions", data=b'{"ms": 1500}', method="POST",
        headers={"content-type": "application/json"},
    )
    assert urllib.request.urlopen(req, timeout=5).status == 204
    client = Daytona(DaytonaConfig(api_key="k", api_url=e.url + "/api"))
    started = time.monotonic()
    sb = client.create()
    assert sb.state.value == "started" and time.monotonic() - started >= 1.4
    # Without waiting, the sandbox is still `destroying`; with it, gone.
    client.delete(sb, timeout=30)
    assert client.get(sb.id).state.value == "destroying"
    client.delete(sb, timeout=30, wait=True)
    with pytest.raises(DaytonaNotFoundError):
        client.get(sb.id)
