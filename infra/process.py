"""Detached server processes: start, find, stop, and read their logs.

A server's pid lives in ``<dir>/server.pid``; a pid counts as ours only while its command
line still mentions that directory, so a recycled pid is never mistaken for the server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from carls.infra.errors import PortTakenError


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((host, port)) == 0


def check_ports_free(host: str, ports: dict[str, int], env_hint: dict[str, str]) -> None:
    """Raise :class:`PortTakenError` naming the first port someone else is listening on."""
    for name, port in ports.items():
        if port_open(host, port):
            raise PortTakenError(
                f"port {port} ({name}) on {host} is already in use by another process",
                hint="stop that process, or pick another port with "
                + env_hint.get(name, "the port settings"),
            )


def running_pid(server_dir: Path) -> int | None:
    """The pid of the server whose state lives in ``server_dir``, if it is alive."""
    try:
        pid = int((server_dir / "server.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    cmdline = _cmdline(pid)
    if cmdline is None or str(server_dir.resolve()) not in cmdline:
        return None
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/status").read_text()
        if "\nState:\tZ" in status:
            return None
    return pid


def _cmdline(pid: int, attempts: int = 25) -> str | None:
    """``/proc/<pid>/cmdline``; it reads empty for a moment while a process execs or
    exits, so an empty read is retried briefly before it counts as gone."""
    for _ in range(attempts):
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        if raw:
            return raw.decode(errors="replace")
        time.sleep(0.02)
    return None


def start(cmd: list[str], server_dir: Path, log_file: Path) -> int:
    """Start ``cmd`` in its own session with output to ``log_file``; record and return its pid."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=server_dir,
        )
    (server_dir / "server.pid").write_text(str(proc.pid))
    return proc.pid


def stop(server_dir: Path, timeout_s: float = 60.0) -> bool:
    """SIGTERM the server, SIGKILL it after ``timeout_s``; return whether one was running."""
    pid = running_pid(server_dir)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if running_pid(server_dir) is None:
            break
        _reap(pid)
        time.sleep(0.2)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
    _reap(pid)
    with contextlib.suppress(FileNotFoundError):
        (server_dir / "server.pid").unlink()
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def rss_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` in MiB (and its peak, VmHWM, is in :func:`peak_rss_mb`)."""
    return _status_kb(pid, "VmRSS")


def peak_rss_mb(pid: int) -> float | None:
    return _status_kb(pid, "VmHWM")


def _status_kb(pid: int, key: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_bytes()[-64_000:]
    except OSError:
        return f"(no log at {path})"
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])
