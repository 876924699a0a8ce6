"""Shared fixtures: start a provider emulator (`sandbox-emulator PROVIDER`) on loopback.

The emulator prints its base URL as the first line of stdout. Each fixture use gets a fresh
emulator process, stopped (and its sandboxes removed) afterwards.
"""

import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
EMULATOR = pathlib.Path(os.environ.get("SANDBOX_EMULATOR_BIN", ROOT / "target" / "debug" / "sandbox-emulator"))


class Emulator:
    def __init__(self, provider, *args):
        if not EMULATOR.exists():
            raise RuntimeError(f"{EMULATOR} is missing: run `cargo build -p sandbox-emulator`")
        self.proc = subprocess.Popen(
            [str(EMULATOR), provider, "--listen", "127.0.0.1:0", *args],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline().strip()
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"emulator did not print its URL (got {line!r})")
        self.url = line
        self.port = int(line.rsplit(":", 1)[1])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def emulator():
    """`emulator("e2b", "--isolation", "none")` starts one; all are stopped at the end."""
    started = []

    def start(provider, *args):
        e = Emulator(provider, *args)
        started.append(e)
        return e

    yield start
    for e in started:
        e.stop()
