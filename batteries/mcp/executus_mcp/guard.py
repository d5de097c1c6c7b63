"""The watchdog between the host and a stdio MCP server: no server outlives a killed host.

Run as ``python -I -S guard.py HOST_PID -- COMMAND [ARGS...]`` (`guarded_command` builds it). The
SDK starts the guard as the leader of a new process group; the guard starts the server in that
group, with the host's pipes as its stdin and stdout (the guard keeps no copy of them, so the host
sees the server's EOF at once), and then waits for one of two things:

- the server exits (the SDK closed its stdin, or it crashed): the guard ends whatever the server left
  behind in its group and exits with the server's code;
- the host dies, even by SIGKILL, when nothing in the host can run: the guard sends SIGTERM to the
  group, gives it ``GRACE_SECONDS``, then SIGKILL, itself included.

It notices the host's death at once through a pidfd on Linux 5.3+, else by polling ``getppid()``
every ``POLL_SECONDS``. An SDK shutdown that escalates to ``killpg`` reaches the whole group as before.

Standard library only, and no import of the package: it starts with ``-I -S`` in tens of
milliseconds, whatever the host's site-packages hold.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time

__all__ = ["GRACE_SECONDS", "MARK", "POLL_SECONDS", "guarded_command", "main"]

MARK = "[executus-mcp guard] "
"""How the guard's own lines on the server's stderr start (the connection quotes them as the reason)."""

GRACE_SECONDS = 2.0
"""How long the server's group has between SIGTERM and SIGKILL once the host is gone."""

POLL_SECONDS = 0.2
"""How often the guard checks on its host where there are no pidfds."""


def guarded_command(command: str, args: list[str], host_pid: int | None = None) -> tuple[str, list[str]]:
    """``(executable, args)`` that run ``command args`` under this guard, for the host ``host_pid``."""
    pid = os.getpid() if host_pid is None else host_pid
    return sys.executable, ["-I", "-S", os.path.abspath(__file__), str(pid), "--", command, *args]


def _others_in_group(pgid: int) -> bool:
    """True while a process other than this one is in group ``pgid`` (False where /proc is missing)."""
    me = os.getpid()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return False
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses, so split after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


def _end_group(child: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the group (not the guard), wait up to ``grace``, then SIGKILL it, guard included."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pgid = os.getpgrp()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if child.poll() is not None and not _others_in_group(pgid):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _pidfd(pid: int) -> int | None:
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        return int(opener(pid))
    except OSError:
        return None


def main(argv: list[str]) -> int:
    """Start the server, wait for it or for the host to die; the exit code is the server's."""
    if len(argv) < 4 or argv[2] != "--":
        sys.stderr.write("usage: guard.py HOST_PID -- COMMAND [ARGS...]\n")
        return 2
    host_pid = int(argv[1])
    command = argv[3:]
    try:
        child = subprocess.Popen(command)
    except OSError as exc:
        sys.stderr.write(f"{MARK}there is no program {command[0]!r} to start ({exc.strerror})\n")
        return 127
    # Hand the pipes over: the server alone holds them now, so its exit is the host's EOF.
    with open(os.devnull, "rb") as null_in, open(os.devnull, "wb") as null_out:
        os.dup2(null_in.fileno(), 0)
        os.dup2(null_out.fileno(), 1)
    host_fd, child_fd = _pidfd(host_pid), _pidfd(child.pid)
    host_gone = os.getppid() != host_pid  # the host died before the guard could watch it
    while not host_gone:
        if host_fd is not None and child_fd is not None:
            ready, _, _ = select.select([host_fd, child_fd], [], [])
            if child_fd in ready:
                break
            host_gone = True
        else:
            try:
                child.wait(timeout=POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                host_gone = os.getppid() != host_pid
    if host_gone:
        _end_group(child, GRACE_SECONDS)
        return 1
    code = child.wait()
    if _others_in_group(os.getpgrp()):
        _end_group(child, GRACE_SECONDS)  # the server left children behind: they go with it
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
