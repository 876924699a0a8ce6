"""The official `runloop-api-client` (pinned 3.0.0) against `sandbox-emulator runloop`.

Proves the emulator speaks Runloop's wire protocol: create and await running, execute (sync,
and async with stdout streamed through the SDK's callback), a failing command, text and binary
files, a tunnel reaching a server started in the devbox, list with paging and the status
filter, suspend/resume, keep-alive, shutdown, not-found; plus the retry behaviour the SDK
relies on (408 long polls, 429 with retry-after-ms, 5xx retried with the same x-request-id and
deduplicated, 409 not retried).
"""

import json
import socket
import time
import urllib.request

import pytest

runloop_api_client = pytest.importorskip("runloop_api_client")
# execute_sync is deprecated upstream but still served (and used by OpenHands-era code).
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
from runloop_api_client import NotFoundError, Runloop, RunloopSDK  # noqa: E402
from runloop_api_client import ConflictError  # noqa: E402


def admin(e, path, body):
    req = urllib.request.Request(e.url + path, data=json.dumps(body).encode(), method="POST", headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def runloop(emulator, monkeypatch):
    e = emulator("runloop")
    monkeypatch.setenv("RUNLOOP_BASE_URL", e.url)
    monkeypatch.setenv("RUNLOOP_API_KEY", "test-key")
    return e, Runloop(timeout=60)


def test_lifecycle_exec_files_tunnel(runloop):
    e, client = runloop
    box = client.devboxes.create(
        name="sid-123",
        blueprint_name="openhands",
        environment_variables={"FOO": "bar"},
        launch_parameters={
            "resource_size_request": "LARGE",
            "keep_alive_time_seconds": 3600,
            "after_idle": {"idle_time_seconds": 600, "on_idle": "suspend"},
            "launch_commands": ["mkdir -p /workspace/project"],
        },
        metadata={"owner": "test"},
    )
    assert box.status == "provisioning" and box.id.startswith("dbx_")
    running = client.devboxes.await_running(box.id)
    assert running.status == "running"
    seen = [t.status for t in running.state_transitions]
    assert seen == ["provisioning", "initializing", "running"], seen
    got = client.devboxes.retrieve(box.id)
    assert got.name == "sid-123" and got.metadata == {"owner": "test"}
    assert got.launch_parameters.resource_size_request == "LARGE"

    # execute_sync: output, env from create, launch command ran.
    r = client.devboxes.execute_sync(box.id, command="echo hi; echo $FOO; echo err >&2; test -d project")
    assert (r.exit_status, r.stdout, r.stderr) == (0, "hi\nbar\n", "err\n")

    # A failing command: exit status and stderr.
    r = client.devboxes.execute_sync(box.id, command="echo oops >&2; exit 3")
    assert r.exit_status == 3 and r.stderr == "oops\n"

    # execute_async + SSE: lines reach the callback while the command runs.
    sdk = RunloopSDK()
    devbox = sdk.devbox.from_id(box.id)
    lines = []
    started = time.monotonic()
    result = devbox.cmd.exec("echo one; sleep 1; echo two; echo three >&2; exit 4", stdout=lambda l: lines.append((time.monotonic() - started, l)))
    assert result.exit_code == 4
    assert "".join(l for _, l in lines).split() == ["one", "two"], lines
    assert lines[0][0] < lines[-1][0] - 0.5, f"stdout was not streamed: {lines}"
    assert result.stdout() == "one\ntwo\n" and result.stderr() == "three\n"

    # The raw stream API and the execution views.
    ex = client.devboxes.execute_async(box.id, command="for i in 1 2 3; do echo line$i; done")
    chunks = list(client.devboxes.executions.stream_stdout_updates(ex.execution_id, devbox_id=box.id))
    assert "".join(c.output for c in chunks) == "line1\nline2\nline3\n"
    assert chunks[0].offset == 0
    done = client.devboxes.executions.await_completed(ex.execution_id, devbox_id=box.id)
    assert done.status == "completed" and done.exit_status == 0 and done.stdout == "line1\nline2\nline3\n"
    # From an offset: the rest only.
    rest = list(client.devboxes.executions.stream_stdout_updates(ex.execution_id, devbox_id=box.id, offset="6"))
    assert "".join(c.output for c in rest) == "line2\nline3\n"

    # execute (optimistic wait) and kill.
    r = client.devboxes.execute(box.id, command="echo quick", optimistic_timeout=10)
    assert r.status == "completed" and r.stdout == "quick\n"
    # The SDK's own UUIDv7 command_id, given twice: one execution, the command run once.
    from uuid_utils import uuid7  # what the SDK makes its ids with
    cid = str(uuid7())
    once = client.devboxes.execute(box.id, command="echo x >> once.txt; wc -l < once.txt", command_id=cid)
    again = client.devboxes.execute(box.id, command="echo x >> once.txt; wc -l < once.txt", command_id=cid)
    assert once.execution_id == again.execution_id and again.stdout.strip() == "1", (once, again)
    slow = client.devboxes.execute_async(box.id, command="sleep 60")
    killed = client.devboxes.executions.kill(slow.execution_id, devbox_id=box.id)
    assert killed.status == "completed" and killed.exit_status != 0

    # stdin of an attached execution.
    cat = client.devboxes.execute_async(box.id, command="cat", attach_stdin=True)
    client.devboxes.executions.send_std_in(cat.execution_id, devbox_id=box.id, text="typed\n")
    client.devboxes.executions.send_std_in(cat.execution_id, devbox_id=box.id, signal="EOF")
    done = client.devboxes.executions.await_completed(cat.execution_id, devbox_id=box.id)
    assert done.stdout == "typed\n" and done.exit_status == 0

    # Files: text, binary (upload/download), visible to commands.
    client.devboxes.write_file_contents(box.id, file_path="/home/user/a.txt", contents="hello\nworld\n")
    assert client.devboxes.read_file_contents(box.id, file_path="/home/user/a.txt") == "hello\nworld\n"
    assert client.devboxes.execute_sync(box.id, command="cat a.txt").stdout == "hello\nworld\n"
    blob = bytes(range(256)) * 64
    client.devboxes.upload_file(box.id, path="data/blob.bin", file=("blob.bin", blob))
    assert client.devboxes.download_file(box.id, path="data/blob.bin").read() == blob
    assert client.devboxes.execute_sync(box.id, command="wc -c < data/blob.bin").stdout.strip() == str(len(blob))

    # A tunnel reaches a server started in the devbox.
    tunnel = client.devboxes.enable_tunnel(box.id, auth_mode="authenticated")
    assert tunnel.tunnel_key and tunnel.auth_token
    assert client.devboxes.retrieve(box.id).tunnel.tunnel_key == tunnel.tunnel_key
    port = free_port()
    client.devboxes.write_file_contents(box.id, file_path="served.txt", contents="through the tunnel")
    client.devboxes.execute_async(box.id, command=f"exec python3 -m http.server {port}")
    url = f"{e.url}/tunnel/{tunnel.tunnel_key}/{port}/served.txt"
    denied = None
    try:
        urllib.request.urlopen(url, timeout=5)
    except urllib.error.HTTPError as err:
        denied = err.code
    assert denied == 401
    body = None
    for _ in range(100):
        try:
            req = urllib.request.Request(url, headers={"X-Runloop-Tunnel-Authorization": f"Bearer {tunnel.auth_token}"})
            with urllib.request.urlopen(req, timeout=5) as resp:
                body = resp.read()
                break
        except urllib.error.HTTPError as err:
            assert err.code == 502
            time.sleep(0.1)
    assert body == b"through the tunnel"
    # The legacy create_tunnel (removed from the SDK) through the raw client.
    legacy = client.post(f"/v1/devboxes/{box.id}/create_tunnel", body={"port": port}, cast_to=object)
    assert legacy["port"] == port
    with urllib.request.urlopen(urllib.request.Request(legacy["url"] + "/served.txt", headers={"X-Runloop-Tunnel-Authorization": f"Bearer {tunnel.auth_token}"}), timeout=5) as resp:
        assert resp.read() == b"through the tunnel"

    # keep_alive, suspend/resume (files survive), shutdown, then not-found.
    assert client.devboxes.keep_alive(box.id) is not None
    assert client.devboxes.suspend(box.id).status in ("suspending", "suspended")
    assert client.devboxes.await_suspended(box.id).status == "suspended"
    with pytest.raises(Exception):
        client.devboxes.execute_sync(box.id, command="true")
    client.devboxes.resume(box.id)
    assert client.devboxes.await_running(box.id).status == "running"
    assert client.devboxes.read_file_contents(box.id, file_path="a.txt") == "hello\nworld\n"
    assert client.devboxes.shutdown(box.id).status == "shutdown"
    assert client.devboxes.retrieve(box.id).shutdown_reason == "api_shutdown"
    with pytest.raises(ConflictError):
        client.devboxes.suspend(box.id)
    with pytest.raises(NotFoundError):
        client.devboxes.retrieve("dbx_missing")
    with pytest.raises(NotFoundError):
        client.devboxes.executions.retrieve("exe_missing", devbox_id=box.id)


def test_list_paging_and_status_filter(runloop):
    e, client = runloop
    ids = [client.devboxes.create_and_await_running(name=f"page-{i}", blueprint_id="bpt_123").id for i in range(3)]
    client.devboxes.shutdown(ids[0])
    running = [d.id for d in client.devboxes.list(limit=1, status="running")]
    assert running == [ids[2], ids[1]], running
    everything = [d.id for d in client.devboxes.list(limit=2)]
    assert everything == list(reversed(ids))
    page = client.devboxes.list(limit=2)
    assert page.has_more is True and len(page.devboxes) == 2


def test_retries_dedupe_and_long_polls(runloop):
    e, client = runloop
    # 429 with retry-after-ms: retried after that long, then succeeds.
    assert admin(e, "/_emulator/runloop/rate_limit", {"count": 1, "retry_after_ms": 50}) == 204
    t = time.monotonic()
    assert client.devboxes.list().devboxes == []
    assert time.monotonic() - t < 0.9, "retry-after-ms was not honoured"

    # A 5xx after the create ran (connection dropped mid-answer): the SDK retries with the same
    # x-request-id and the emulator answers the first devbox instead of making a second.
    admin(e, "/_emulator/faults", [{"type": "drop", "after_bytes": 0, "count": 1, "path": "/v1/devboxes", "method": "POST"}])
    box = client.devboxes.create(name="once")
    assert [d.id for d in client.devboxes.list()] == [box.id]

    # 503 on execute_sync: retried.
    client.devboxes.await_running(box.id)
    admin(e, "/_emulator/faults", [{"type": "status", "status": 503, "count": 1, "path": f"/v1/devboxes/{box.id}/execute_sync"}])
    assert client.devboxes.execute_sync(box.id, command="echo again").stdout == "again\n"

    # 408 from the long poll is not an error: await_running asks again.
    admin(e, "/_emulator/faults", [{"type": "status", "status": 408, "count": 2, "path": f"/v1/devboxes/{box.id}/wait_for_status"}])
    assert client.devboxes.await_running(box.id).status == "running"

    # wait_for_status answers 408 while the status is not reached (raw call, no retries).
    client.devboxes.suspend(box.id)
    client.devboxes.await_suspended(box.id)
    quick = Runloop(max_retries=0)
    t = time.monotonic()
    with pytest.raises(Exception) as err:
        quick.post(f"/v1/devboxes/{box.id}/wait_for_status", body={"statuses": ["running"], "timeout_seconds": 0.5}, cast_to=object)
    assert getattr(err.value, "status_code", None) == 408 and 0.4 < time.monotonic() - t < 5

    # A real conflict carries x-should-retry: false, so the SDK gives up at once.
    client.devboxes.shutdown(box.id)
    t = time.monotonic()
    with pytest.raises(ConflictError):
        client.devboxes.suspend(box.id)
    assert time.monotonic() - t < 1, "a 409 was retried"
