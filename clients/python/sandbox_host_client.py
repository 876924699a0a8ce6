"""A small typed client for the `sandbox-host serve` HTTP API (httpx).

    from sandbox_host_client import Client

    with Client("http://127.0.0.1:8080", token="...") as host:
        with host.create("local", labels={"agent": "a1"}) as sb:
            print(sb.exec("echo hello").stdout)
            for kind, data in sb.stream("make test"):   # stdout/stderr chunks as they happen
                print(kind, data, end="")
            sb.write_file("notes.txt", b"hi")

Every error of the server raises `SandboxHostError` with its HTTP status, `code` (e.g.
``not_found``, ``quota_exceeded``) and message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import httpx

__all__ = ["Client", "Sandbox", "SandboxInfo", "ExecResult", "Process", "SandboxHostError"]


class SandboxHostError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class SandboxInfo:
    id: str
    provider: str
    state: str
    workdir: str
    labels: dict[str, str] = field(default_factory=dict)
    name: Optional[str] = None
    image: Optional[str] = None
    owner: Optional[str] = None
    created_at_ms: int = 0

    @staticmethod
    def from_json(v: Mapping[str, Any]) -> "SandboxInfo":
        return SandboxInfo(
            id=v["id"], provider=v["provider"], state=v["state"], workdir=v.get("workdir", ""),
            labels=dict(v.get("labels") or {}), name=v.get("name"), image=v.get("image"),
            owner=v.get("owner"), created_at_ms=v.get("created_at_ms") or 0,
        )


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool


@dataclass(frozen=True)
class Process:
    pid: str
    command: str
    running: bool
    exit_code: Optional[int]


Command = Union[str, Sequence[str]]


def _raise_for(r: httpx.Response) -> None:
    if r.status_code < 400:
        return
    try:
        err = r.json()["error"]
        raise SandboxHostError(r.status_code, err["code"], err["message"])
    except (ValueError, KeyError, TypeError):
        raise SandboxHostError(r.status_code, "http", r.text) from None


def _exec_body(command: Command, cwd: Optional[str], env: Optional[Mapping[str, str]],
               timeout: Optional[float], stdin: Optional[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"command": command} if isinstance(command, str) else {"argv": list(command)}
    if cwd is not None:
        body["cwd"] = cwd
    if env:
        body["env"] = dict(env)
    if timeout is not None:
        body["timeout_secs"] = timeout
    if stdin is not None:
        body["stdin"] = stdin
    return body


def _sse(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) pairs from Server-Sent Event lines."""
    event, data = "", []
    for line in lines:
        if line == "":
            if event or data:
                yield event or "message", "\n".join(data)
            event, data = "", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


class Client:
    """A connection to one `sandbox-host serve`. Thread-safe as httpx.Client is."""

    def __init__(self, base_url: str, token: Optional[str] = None, timeout: float = 600.0):
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        r = self._http.request(method, path, **kw)
        _raise_for(r)
        return r

    def providers(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/providers").json()["providers"]

    def create(self, provider: str, *, image: Optional[str] = None, name: Optional[str] = None,
               env: Optional[Mapping[str, str]] = None, labels: Optional[Mapping[str, str]] = None,
               timeout_secs: Optional[int] = None, **spec: Any) -> "Sandbox":
        body_spec: dict[str, Any] = {k: v for k, v in spec.items() if v is not None}
        for k, v in (("image", image), ("name", name), ("timeout_secs", timeout_secs)):
            if v is not None:
                body_spec[k] = v
        if env:
            body_spec["env"] = dict(env)
        if labels:
            body_spec["labels"] = dict(labels)
        v = self._call("POST", "/v1/sandboxes", json={"provider": provider, "spec": body_spec}).json()
        return Sandbox(self, SandboxInfo.from_json(v))

    def list(self, provider: Optional[str] = None,
             labels: Optional[Mapping[str, str]] = None) -> list[SandboxInfo]:
        """Every sandbox of this tenant (all pages)."""
        out: list[SandboxInfo] = []
        cursor: Optional[str] = None
        while True:
            params: list[tuple[str, str]] = [("label", f"{k}={v}") for k, v in (labels or {}).items()]
            if provider:
                params.append(("provider", provider))
            if cursor:
                params.append(("cursor", cursor))
            page = self._call("GET", "/v1/sandboxes", params=params).json()
            out.extend(SandboxInfo.from_json(s) for s in page["sandboxes"])
            cursor = page.get("next_cursor")
            if not cursor:
                return out

    def get(self, sandbox_id: str) -> SandboxInfo:
        return SandboxInfo.from_json(self._call("GET", f"/v1/sandboxes/{sandbox_id}").json())

    def sandbox(self, sandbox_id: str) -> "Sandbox":
        """A handle to an existing sandbox (e.g. after the agent server restarted)."""
        return Sandbox(self, self.get(sandbox_id))

    def events(self, sandbox_id: Optional[str] = None) -> Iterator[dict[str, Any]]:
        """Status events (RuntimeStatus-shaped dicts) until the server closes the stream."""
        params = {"sandbox_id": sandbox_id} if sandbox_id else {}
        with self._http.stream("GET", "/v1/events", params=params, timeout=None) as r:
            if r.status_code >= 400:
                r.read()
                _raise_for(r)
            for event, data in _sse(r.iter_lines()):
                if event == "status":
                    yield json.loads(data)


class Sandbox:
    """One sandbox. As a context manager it is destroyed on exit."""

    def __init__(self, client: Client, info: SandboxInfo):
        self._c = client
        self.info = info
        self.id = info.id
        self._base = f"/v1/sandboxes/{info.id}"

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.destroy()
        except SandboxHostError as e:
            if e.status != 404:
                raise

    def refresh(self) -> SandboxInfo:
        self.info = self._c.get(self.id)
        return self.info

    def exec(self, command: Command, *, cwd: Optional[str] = None,
             env: Optional[Mapping[str, str]] = None, timeout: Optional[float] = None,
             stdin: Optional[str] = None) -> ExecResult:
        v = self._c._call("POST", f"{self._base}/exec", json=_exec_body(command, cwd, env, timeout, stdin)).json()
        return ExecResult(v["exit_code"], v["stdout"], v["stderr"], v["timed_out"])

    def stream(self, command: Command, *, cwd: Optional[str] = None,
               env: Optional[Mapping[str, str]] = None, timeout: Optional[float] = None,
               stdin: Optional[str] = None) -> Iterator[tuple[str, Any]]:
        """Yields ("stdout"|"stderr", text) as output happens, then ("exit", ExecResult-less dict
        with exit_code and timed_out). A failure arrives as SandboxHostError."""
        body = _exec_body(command, cwd, env, timeout, stdin)
        with self._c._http.stream("POST", f"{self._base}/exec", json=body,
                                  headers={"accept": "text/event-stream"}) as r:
            if r.status_code >= 400:
                r.read()
                _raise_for(r)
            for event, data in _sse(r.iter_lines()):
                v = json.loads(data)
                if event in ("stdout", "stderr"):
                    yield event, v["data"]
                elif event == "exit":
                    yield "exit", {"exit_code": v["exit_code"], "timed_out": v["timed_out"]}
                    return
                elif event == "error":
                    raise SandboxHostError(500, v["error"]["code"], v["error"]["message"])

    def start_process(self, command: Command, *, cwd: Optional[str] = None,
                      env: Optional[Mapping[str, str]] = None) -> Process:
        v = self._c._call("POST", f"{self._base}/processes", json=_exec_body(command, cwd, env, None, None)).json()
        return Process(v["pid"], v["command"], v["running"], v.get("exit_code"))

    def process(self, pid: str) -> Process:
        v = self._c._call("GET", f"{self._base}/processes/{pid}").json()
        return Process(v["pid"], v["command"], v["running"], v.get("exit_code"))

    def process_output(self, pid: str, stdout_offset: int = 0, stderr_offset: int = 0) -> dict[str, Any]:
        return self._c._call("GET", f"{self._base}/processes/{pid}/output",
                             params={"stdout_offset": stdout_offset, "stderr_offset": stderr_offset}).json()

    def kill(self, pid: str, signal: int = 15) -> None:
        self._c._call("POST", f"{self._base}/processes/{pid}/kill", json={"signal": signal})

    def read_file(self, path: str) -> bytes:
        return self._c._call("GET", f"{self._base}/files", params={"path": path}).content

    def write_file(self, path: str, data: Union[bytes, str], mode: Optional[int] = None) -> None:
        params: dict[str, str] = {"path": path}
        if mode is not None:
            params["mode"] = format(mode, "o")
        content = data.encode() if isinstance(data, str) else data
        self._c._call("PUT", f"{self._base}/files", params=params, content=content,
                      headers={"content-type": "application/octet-stream"})

    def list_dir(self, path: str = ".") -> list[dict[str, Any]]:
        return self._c._call("GET", f"{self._base}/dirs", params={"path": path}).json()["entries"]

    def mkdir(self, path: str) -> None:
        self._c._call("POST", f"{self._base}/dirs", params={"path": path})

    def remove(self, path: str, recursive: bool = False) -> None:
        self._c._call("DELETE", f"{self._base}/files", params={"path": path, "recursive": str(recursive).lower()})

    def port_url(self, port: int) -> dict[str, Any]:
        return self._c._call("GET", f"{self._base}/ports/{port}").json()

    def pause(self) -> None:
        self.info = SandboxInfo.from_json(self._c._call("POST", f"{self._base}/pause").json())

    def resume(self) -> None:
        self.info = SandboxInfo.from_json(self._c._call("POST", f"{self._base}/resume").json())

    def set_timeout(self, seconds: int) -> None:
        self._c._call("POST", f"{self._base}/timeout", json={"seconds": seconds})

    def destroy(self) -> None:
        self._c._call("DELETE", self._base)
