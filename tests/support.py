"""Helpers shared by the tests that start real servers and subprocesses on loopback, and that
drive devices (`read_all`, `hold_setpoints`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import selectors
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiomqtt
import pytest

from hubctl.errors import DeviceError
from hubctl.transport.modbus import ModbusConnection
from simulators.contract import SHARED, load_score

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from hubctl.devices.base import Device, Reading

log = logging.getLogger("hubctl.devices")  # the name the devices' own logs have
REPO = Path(__file__).resolve().parents[1]


def open_sockets() -> set[str]:
    """The sockets this process holds open (for leak checks)."""
    out = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = str(fd.readlink())
            if target.startswith("socket:"):
                out.add(target)
    return out


def wait_for_port(port: int, what: str, timeout_s: float = 5.0) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port, or raise RuntimeError."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as probe, contextlib.suppress(OSError):
            probe.connect(("127.0.0.1", port))
            return
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not start")


MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).is_file()), None
)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Mosquitto:
    """A private mosquitto on a free loopback port, from a config of its listener plus `extra` lines;
    restartable on the same port."""

    def __init__(self, directory: Path, extra: str = "allow_anonymous true\n") -> None:
        self.port = free_port()
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\npersistence false\n{extra}", encoding="utf-8")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert MOSQUITTO is not None
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port, "mosquitto")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(5)
            self.process = None


OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A throwaway PKI made at test time (`make_tls`): a CA, a server certificate for 127.0.0.1 and
    a client certificate it signed, and a second CA that signed nothing here (a wrong CA)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _openssl(*args: str) -> None:
    subprocess.run([OPENSSL, *args], check=True, capture_output=True, timeout=30)


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN=hubctl test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def _make_leaf(directory: Path, name: str, ca: tuple[Path, Path], serial: int, ext: str) -> tuple[Path, Path]:
    cert, key, csr = directory / f"{name}.crt", directory / f"{name}.key", directory / f"{name}.csr"
    extfile = directory / f"{name}.ext"
    extfile.write_text(ext, encoding="utf-8")
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-set_serial", str(serial), "-days", "2", "-out", str(cert), "-extfile", str(extfile),
    )  # fmt: skip
    return cert, key


def make_tls(directory: Path) -> TlsFiles:
    """Make the test PKI in `directory` with openssl (EC P-256 keys, valid two days)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _make_ca(directory, "ca")
    other_ca, _ = _make_ca(directory, "other-ca")
    server = _make_leaf(
        directory, "127.0.0.1", ca, 1, "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    )
    client = _make_leaf(directory, "hubctl", ca, 2, "extendedKeyUsage=clientAuth\n")
    return TlsFiles(ca[0], server[0], server[1], client[0], client[1], other_ca)


class TlsMosquitto(Mosquitto):
    """A private mosquitto with one TLS listener on a free loopback port, its certificate signed by
    the test CA (`make_tls`); with `require_certificate`, clients must show one the CA signed."""

    def __init__(self, directory: Path, tls: TlsFiles, *, require_certificate: bool = False) -> None:
        lines = [
            f"cafile {tls.ca}",
            f"certfile {tls.server_cert}",
            f"keyfile {tls.server_key}",
            f"require_certificate {'true' if require_certificate else 'false'}",
            "allow_anonymous true",
        ]
        if os.geteuid() == 0:  # as root mosquitto would drop to its own user, which cannot read tmp_path
            lines.append("user root")
        super().__init__(directory, "\n".join(lines) + "\n")
        self.tls = tls

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"

    def client(self, *, client_cert: bool = False, **options: Any) -> aiomqtt.Client:
        """A test client over TLS, trusting the test CA (with the client certificate if asked)."""
        tls = self.tls
        params = aiomqtt.TLSParameters(
            ca_certs=str(tls.ca),
            certfile=str(tls.client_cert) if client_cert else None,
            keyfile=str(tls.client_key) if client_cert else None,
        )
        return aiomqtt.Client("127.0.0.1", self.port, tls_params=params, **options)


def read_until(proc: subprocess.Popen[bytes], marker: str, timeout_s: float) -> list[str]:
    """stdout lines of `proc` (started unbuffered) up to one that is `marker`; the test fails after
    `timeout_s` or when the process ends first, with what it printed."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(deadline - time.monotonic(), 0.01)):
                continue
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.decode().rstrip("\n"))
            if lines[-1] == marker:
                return lines
    stderr = proc.stderr.read().decode() if proc.stderr is not None and proc.poll() is not None else ""
    pytest.fail(f"no {marker!r} within {timeout_s} s; stdout {lines}; stderr {stderr}")


def reap_children(children: list[subprocess.Popen[bytes]]) -> None:
    """Kill the children still running, forget them all, and fail if any was still running."""
    running = [p for p in children if p.poll() is None]
    for p in running:
        p.kill()
        p.wait(timeout=5)
    children.clear()
    assert not running, f"child processes left running: {[p.args for p in running]}"


def assert_no_new_sockets(before: set[str], grace_s: float = 2.0) -> None:
    """Fail if this process holds sockets it did not hold `before`, after `grace_s` for closing ones
    (a closed transport lets go of its socket on the event loop's last turn)."""
    deadline = time.monotonic() + grace_s
    while (leaked := open_sockets() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not leaked, f"sockets left open: {sorted(leaked)}"


class Children:
    """The `hubctl` child processes a test module starts: spawned unbuffered with both pipes (a
    buffered reader could hold "ready" while select() sees an empty pipe), killed by the leak
    fixture if a test leaves one running."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def hubctl(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """`python -m hubctl.cli ARGS` from the repository."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "hubctl.cli", *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
            env=env,
        )
        self.procs.append(proc)
        return proc


def leak_fixture(children: Children, *, modbus: bool = False) -> Callable[[], Iterator[None]]:
    """An autouse fixture for a module: fail a test that leaves a child process running (and kill
    it), a socket open or, with `modbus`, a Modbus connection. Assign it to `no_leaks`."""

    @pytest.fixture(autouse=True, name="no_leaks")
    def fixture() -> Iterator[None]:
        before = open_sockets()
        yield
        reap_children(children.procs)
        if modbus:
            assert not ModbusConnection.open_connections()
        assert_no_new_sockets(before)

    return fixture


def score_module() -> Any:
    """The shared contract's scorer (`simulators.contract.load_score`); skips the test without it."""
    if not (SHARED / "tools" / "score.py").exists():
        pytest.skip(f"{SHARED / 'tools' / 'score.py'} not found")
    return load_score()


# --- Driving devices -------------------------------------------------------------------------------------


async def read_all(devices: Sequence[Device]) -> dict[str, Reading | DeviceError]:
    """Read every device once, concurrently; a device's failure is its entry, not an exception."""

    async def one(device: Device) -> Reading | DeviceError:
        try:
            return await device.read()
        except DeviceError as exc:
            return exc

    results = await asyncio.gather(*(one(device) for device in devices))
    return {device.id: result for device, result in zip(devices, results, strict=True)}


async def hold_setpoints(devices: Sequence[Device], *, tick_s: float = 0.5) -> None:
    """Re-write held setpoints before their revert timers run out; runs until cancelled.

    A failed refresh is logged (once per device until it works again) and
    tried again on the next tick: the refresh interval leaves room for it.
    """
    failing: set[str] = set()
    while True:
        for device in devices:
            if not device.refresh_due():
                continue
            try:
                await device.refresh()
            except DeviceError as exc:
                if device.id not in failing:
                    log.warning("%s: setpoint refresh failed: %s", device.id, exc)
                failing.add(device.id)
            else:
                if device.id in failing:
                    log.info("%s: setpoint refresh works again", device.id)
                failing.discard(device.id)
        await asyncio.sleep(tick_s)


class TraceTail:
    """Follows a `hubctl run --trace FILE`: each `poll` returns the JSON-lines records written since
    the last one (complete lines only), and keeps them all in `records`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        self._offset = 0

    def poll(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open(encoding="utf-8") as f:
            f.seek(self._offset)
            text = f.read()
        complete = text[: text.rfind("\n") + 1]
        self._offset += len(complete.encode())
        new = [json.loads(line) for line in complete.splitlines() if line]
        self.records.extend(new)
        return new
