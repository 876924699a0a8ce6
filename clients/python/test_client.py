"""The Python client against a real `sandbox-host serve` (started by tests/tests/serve.rs,
which passes SANDBOX_HOST_URL and two tenants' tokens)."""

import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from sandbox_host_client import Client, SandboxHostError  # noqa: E402

URL = os.environ.get("SANDBOX_HOST_URL")
pytestmark = pytest.mark.skipif(not URL, reason="SANDBOX_HOST_URL is not set (run through cargo test --test serve)")


@pytest.fixture
def host():
    with Client(URL, token=os.environ.get("SANDBOX_HOST_TOKEN")) as c:
        yield c


def test_agent_loop_in_ten_lines(host):
    assert "local" in [p["name"] for p in host.providers()]
    with host.create("local", labels={"agent": "py"}, env={"WHO": "py"}) as sb:
        r = sb.exec("echo hello $WHO; echo oops >&2; exit 4")
        assert (r.exit_code, r.stdout, r.stderr, r.timed_out) == (4, "hello py\n", "oops\n", False)
        assert sb.exec(["cat"], stdin="piped").stdout == "piped"
        assert sb.exec("sleep 5", timeout=0.3).timed_out
        sb.mkdir("dir")
        sb.write_file("dir/a.txt", b"\x00\x01bytes", mode=0o600)
        assert sb.read_file("dir/a.txt") == b"\x00\x01bytes"
        assert [e["name"] for e in sb.list_dir("dir")] == ["a.txt"]
        sb.remove("dir", recursive=True)
        with pytest.raises(SandboxHostError) as e:
            sb.read_file("dir/a.txt")
        assert e.value.status == 404 and e.value.code == "not_found"
        assert [s.id for s in host.list(labels={"agent": "py"})] == [sb.id]
        assert host.sandbox(sb.id).info.state == "running"


def test_streaming_order_and_timing(host):
    with host.create("local") as sb:
        seen = []
        for kind, data in sb.stream("echo one; sleep 0.8; echo two >&2"):
            seen.append((kind, data, time.monotonic()))
        assert [(k, d) for k, d, _ in seen] == [("stdout", "one\n"), ("stderr", "two\n"),
                                                ("exit", {"exit_code": 0, "timed_out": False})]
        assert seen[1][2] - seen[0][2] > 0.5, "output was not streamed as it happened"


def test_background_process_and_lifecycle(host):
    with host.create("local") as sb:
        p = sb.start_process("echo up; sleep 30")
        deadline = time.monotonic() + 10
        while sb.process_output(p.pid)["stdout"] != "up\n":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        sb.kill(p.pid, 9)
        deadline = time.monotonic() + 10
        while sb.process(p.pid).running:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert sb.port_url(8000)["url"].startswith("http")
        sb.pause()
        assert sb.info.state == "paused"
        sb.resume()
        assert sb.info.state == "running"
        sb.set_timeout(600)
    with pytest.raises(SandboxHostError) as e:
        host.get(sb.id)
    assert e.value.status == 404


def test_other_tenant_cannot_see_it(host):
    other = os.environ.get("SANDBOX_HOST_OTHER_TOKEN")
    if not other:
        pytest.skip("no second tenant token")
    with host.create("local") as sb, Client(URL, token=other) as b:
        assert b.list() == []
        for call in (lambda: b.get(sb.id), lambda: b.sandbox(sb.id)):
            with pytest.raises(SandboxHostError) as e:
                call()
            assert e.value.status == 404
    with Client(URL, token="wrong") as bad, pytest.raises(SandboxHostError) as e:
        bad.list()
    assert e.value.status == 401 and e.value.code == "unauthorized"
