"""The official `modal` SDK (pinned 1.6.4) against `sandbox-emulator modal`.

The SDK speaks gRPC over h2c to the emulator (`MODAL_SERVER_URL=http://localhost:PORT`), V2
sandboxes by default: control plane and task command router on the same port, commands really
running in localbox.
"""

import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

# Read by modal at import: an empty config, never the user's ~/.modal.toml.
os.environ["MODAL_CONFIG_PATH"] = os.path.join(tempfile.mkdtemp(prefix="modal-sdk-test-"), "modal.toml")

import modal  # noqa: E402
import pytest  # noqa: E402


def fresh_client():
    # The SDK keeps one client per process, bound to the first server URL: each test has its
    # own emulator.
    modal.client._Client._set_env_client(None)


@pytest.fixture
def modal_env(emulator, monkeypatch):
    e = emulator("modal")
    fresh_client()
    monkeypatch.setenv("MODAL_SERVER_URL", f"http://localhost:{e.port}")
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-x")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-y")
    monkeypatch.setenv("MODAL_ENVIRONMENT", "dev")
    return e


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sdk_sandbox_scenario(modal_env):
    # App lookup: missing without create, then created.
    with pytest.raises(modal.exception.NotFoundError):
        modal.App.lookup("sdk-test-app")
    app = modal.App.lookup("sdk-test-app", create_if_missing=True)
    assert app.app_id.startswith("ap-")
    assert modal.App.lookup("sdk-test-app").app_id == app.app_id

    port, eport = free_port(), free_port()
    sb = modal.Sandbox.create(
        "sleep",
        "infinity",
        app=app,
        image=modal.Image.from_registry("alpine:3.20"),
        workdir="/workspace",
        env={"GREETING": "from-env"},
        unencrypted_ports=[port],
        encrypted_ports=[eport],
        timeout=600,
    )
    try:
        assert sb.object_id.startswith("sb-")

        # exec: stdout streamed (the first line arrives before the command sleeps), the exit code.
        p = sb.exec("sh", "-c", "echo one; sleep 0.3; echo two; echo $GREETING")
        chunks = list(p.stdout)
        assert chunks[0] == "one\n"
        assert "".join(chunks) == "one\ntwo\nfrom-env\n"
        assert p.wait() == 0

        # A failing command: its stderr and exit code.
        p = sb.exec("sh", "-c", "echo oops >&2; exit 7")
        assert p.stderr.read() == "oops\n"
        assert p.wait() == 7
        assert p.returncode == 7

        # stdin to a running process.
        p = sb.exec("cat")
        p.stdin.write(b"hello through stdin\n")
        p.stdin.write_eof()
        p.stdin.drain()
        assert p.stdout.read() == "hello through stdin\n"
        assert p.wait() == 0

        # Filesystem: binary intact, text, listing.
        blob = bytes(range(256)) * 64
        sb.filesystem.write_bytes(blob, "/workspace/blob.bin")
        assert sb.filesystem.read_bytes("/workspace/blob.bin") == blob
        sb.filesystem.write_text("hello files\n", "/workspace/hello.txt")
        assert sb.filesystem.read_text("/workspace/hello.txt") == "hello files\n"
        sb.filesystem.make_directory("/workspace/sub/dir")
        names = sorted(f.name for f in sb.filesystem.list_files("/workspace"))
        assert names == ["blob.bin", "hello.txt", "sub"]
        st = sb.filesystem.stat("/workspace/blob.bin")
        assert st.size == len(blob) and st.is_file()
        sb.filesystem.remove("/workspace/sub", recursive=True)
        with pytest.raises(modal.exception.SandboxFilesystemNotFoundError):
            sb.filesystem.read_bytes("/workspace/sub/missing")
        p = sb.exec("wc", "-c", "/workspace/blob.bin")
        assert p.stdout.read().split()[0] == str(len(blob))

        # A tunnel to a server started in the sandbox.
        sb.filesystem.write_text("served\n", "/workspace/page.txt")
        server = sb.exec("python3", "-m", "http.server", str(port), "--bind", "127.0.0.1")
        tunnel = sb.tunnels()[port]
        host, tport = tunnel.tcp_socket
        body = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://{host}:{tport}/page.txt", timeout=2) as r:
                    body = r.read()
                    break
            except OSError:
                time.sleep(0.1)
        assert body == b"served\n"
        del server

        # An encrypted tunnel: TLS (the emulator's test CA) in front of a server in the sandbox.
        server = sb.exec("python3", "-m", "http.server", str(eport), "--bind", "127.0.0.1")
        url = sb.tunnels()[eport].url
        assert url.startswith("https://localhost:")
        with urllib.request.urlopen(f"{modal_env.url}/_emulator/modal/ca.pem", timeout=10) as r:
            ctx = ssl.create_default_context(cadata=r.read().decode())
        body = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"{url}/page.txt", timeout=2, context=ctx) as r:
                    body = r.read()
                    break
            except OSError:
                time.sleep(0.1)
        assert body == b"served\n"
        del server

        # Tags and list.
        sb.set_tags({"team": "blue", "run": "sdk"})
        assert sb.get_tags() == {"team": "blue", "run": "sdk"}
        listed = [s.object_id for s in modal.Sandbox.list(app_id=app.app_id, tags={"team": "blue"})]
        assert listed == [sb.object_id]
        assert list(modal.Sandbox.list(app_id=app.app_id, tags={"team": "red"})) == []

        # Re-attach by id: same sandbox, still running, exec works.
        again = modal.Sandbox.from_id(sb.object_id)
        assert again.poll() is None
        p = again.exec("cat", "/workspace/hello.txt")
        assert p.stdout.read() == "hello files\n"
    finally:
        sb.terminate()

    # Terminated: poll reports 137, and the sandbox no longer lists.
    assert sb.poll() == 137
    assert modal.Sandbox.from_id(sb.object_id).poll() == 137
    assert [s.object_id for s in modal.Sandbox.list(app_id=app.app_id)] == []


def test_sdk_without_token_is_refused_before_any_call(emulator):
    # A fresh interpreter: the SDK caches its client (and credentials) per process.
    e = emulator("modal")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_TOKEN")}
    env.update(MODAL_SERVER_URL=f"http://localhost:{e.port}", MODAL_ENVIRONMENT="dev")
    script = "import modal\ntry:\n    modal.App.lookup('x', create_if_missing=True)\nexcept modal.exception.AuthError:\n    print('auth-error')\n"
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "auth-error", out.stderr


def admin(e, route, body):
    req = urllib.request.Request(
        f"{e.url}/_emulator/{route}", data=json.dumps(body).encode(), method="POST", headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 204


def test_sdk_survives_faults(emulator, monkeypatch):
    # HTTP 503 from the shared fault switch (grpclib reads it as UNAVAILABLE): retried.
    e = emulator("modal", "--fault", "status:503,count=2,path=/modal.client.ModalClient/AppGetOrCreate")
    fresh_client()
    monkeypatch.setenv("MODAL_SERVER_URL", f"http://localhost:{e.port}")
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-x")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-y")
    monkeypatch.setenv("MODAL_ENVIRONMENT", "dev")
    app = modal.App.lookup("faults", create_if_missing=True)
    # gRPC UNAVAILABLE (Trailers-Only) on the create: retried with the same idempotency key,
    # so one sandbox.
    admin(e, "modal/grpc-faults", [{"method": "SandboxCreateV2", "code": 14, "count": 1}])
    sb = modal.Sandbox.create("sleep", "infinity", app=app, workdir="/workspace")
    try:
        assert [s.object_id for s in modal.Sandbox.list(app_id=app.app_id)] == [sb.object_id]
        # The output stream reset mid-message: the SDK resumes from its byte offset.
        admin(e, "modal/output-reset", {"after_bytes": 10000})
        script = "i=0; while [ $i -lt 2000 ]; do echo line-$i; i=$((i+1)); [ $i = 1000 ] && sleep 0.3; done; true"
        p = sb.exec("sh", "-c", script)
        assert p.stdout.read() == "".join(f"line-{i}\n" for i in range(2000))
        assert p.wait() == 0
        # Every fault was injected (and consumed).
        for route in ["faults", "modal/grpc-faults", "modal/output-reset"]:
            with urllib.request.urlopen(f"{e.url}/_emulator/{route}", timeout=10) as r:
                assert json.loads(r.read()) == [], route
    finally:
        sb.terminate()
