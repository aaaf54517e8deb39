"""The processes the tests start (Envoy, the control service, the Stripe
stand-in, localstripe), waited for by their progress rather than by a fixed
deadline, and remembered so that a failing test can show their logs.

A loaded machine (CI shares its two cores with whatever else runs) makes
every start-up slower, never different: so a wait goes on while the process
it waits for is alive and still working, fails at once with the log's tail
when the process died, and fails when the process has stopped using the CPU
without getting ready (stuck, not slow). `limit` is only a backstop.
"""
from __future__ import annotations

import os
import selectors
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

# How long a process may use no CPU at all, while not ready, before it counts as stuck.
STALL_SECONDS = float(os.environ.get("KEYBRAKE_TEST_STALL_SECONDS", "60"))
# The backstop for any one wait (a test's own bound is pytest-timeout's).
LIMIT_SECONDS = float(os.environ.get("KEYBRAKE_TEST_WAIT_LIMIT_SECONDS", "240"))
TAIL_LINES = 40
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class ProcessDied(RuntimeError):
    """A process the test needed exited on its own."""


class NotReady(TimeoutError):
    """A process stayed alive but did not get ready (stuck, or past the backstop)."""


@dataclass(eq=False)
class Proc:
    """One started process and the log file it writes to."""
    name: str
    popen: subprocess.Popen
    log: Path
    started_at: float = field(default_factory=time.monotonic)
    # Set when the harness stops or kills it on purpose: its exit is then no failure.
    stopped: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def died(self) -> bool:
        return not self.stopped and not self.alive()

    def cpu_ticks(self) -> int | None:
        """User + system CPU time of the process and its waited-for children, in clock ticks."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return sum(int(f) for f in fields[11:15])
        except (OSError, ValueError, IndexError):
            return None

    def log_size(self) -> int:
        try:
            return self.log.stat().st_size
        except OSError:
            return 0

    def tail(self, lines: int = TAIL_LINES, since: int = 0) -> str:
        """The last `lines` lines the process logged after byte offset `since`."""
        try:
            with self.log.open("rb") as f:
                f.seek(since)
                text = f.read().decode(errors="replace")
        except OSError as e:
            return f"(no log: {e})"
        kept = text.splitlines()[-lines:]
        return "\n".join(kept) if kept else "(nothing logged)"

    def describe(self) -> str:
        state = "running" if self.alive() else f"exited with {self.popen.returncode}"
        return f"{self.name} (pid {self.pid}, {state}, log {self.log})"


# Every process started in this test session, for the failure report (conftest.py).
REGISTRY: list[Proc] = []


def launch(name: str, argv: Sequence[str], log: Path, *, env: dict[str, str] | None = None,
           stdout_pipe: bool = False, **popen: Any) -> Proc:
    """Starts a process whose stderr (and stdout, unless piped for a ready
    line) goes to `log`, and registers it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "ab")
    popen_args: dict[str, Any] = {"stdout": subprocess.PIPE if stdout_pipe else out, "stderr": out, "env": env, **popen}
    proc = Proc(name, subprocess.Popen(list(map(str, argv)), **popen_args), log)
    out.close()
    REGISTRY.append(proc)
    return proc


def kill_leftovers() -> None:
    """Kills every registered process still running: the last resort when a
    session ends without its fixtures' teardown (interrupted, or a teardown
    that failed), so that no Envoy or control service outlives the tests."""
    for proc in REGISTRY:
        if proc.alive():
            proc.stopped = True
            proc.popen.kill()
            proc.popen.wait()


def stop(proc: Proc, sig: int | None = None, timeout: float = 20.0) -> None:
    """Stops a process on purpose (SIGTERM, or `sig`), killing it if it lingers."""
    import signal as _signal

    proc.stopped = True
    if proc.alive():
        proc.popen.send_signal(sig if sig is not None else _signal.SIGTERM)
        try:
            proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait()
    else:
        proc.popen.wait()


def death_report(proc: Proc) -> str:
    return f"{proc.describe()} before it got ready; last lines of its log:\n{proc.tail()}"


class _Progress:
    """Tracks whether any of some processes used CPU recently."""

    def __init__(self, procs: Sequence[Proc]):
        self.procs = list(procs)
        self.ticks = self._ticks()
        self.last_change = time.monotonic()

    def _ticks(self) -> int:
        return sum(t for p in self.procs if (t := p.cpu_ticks()) is not None)

    def stalled_for(self) -> float:
        now_ticks = self._ticks()
        if now_ticks != self.ticks:
            self.ticks, self.last_change = now_ticks, time.monotonic()
        return time.monotonic() - self.last_change


def wait_ready(predicate: Callable[[], Any], what: str, procs: Sequence[Proc], *, stall: float = STALL_SECONDS,
               limit: float = LIMIT_SECONDS, interval: float = 0.05) -> Any:
    """Polls `predicate` until it returns something truthy, while `procs` start.

    Raises ProcessDied at once when one of them exits, and NotReady when none of
    them used any CPU for `stall` seconds (stuck) or after `limit` seconds."""
    started = time.monotonic()
    progress = _Progress(procs)
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - reported if we give up
            last_error = e
        for p in procs:
            if p.died():
                raise ProcessDied(f"waiting for {what}: {death_report(p)}")
        stalled = progress.stalled_for()
        waited = time.monotonic() - started
        if (procs and stalled > stall) or waited > limit:
            why = f"no CPU used for {stalled:.0f} s" if procs and stalled > stall else f"still not ready after {waited:.0f} s"
            logs = "\n".join(f"--- {p.describe()}\n{p.tail()}" for p in procs)
            raise NotReady(f"waiting for {what}: {why} (last error: {last_error!r})\n{logs}")
        time.sleep(interval)


def read_ready_line(proc: Proc, prefix: str, *, stall: float = STALL_SECONDS, limit: float = LIMIT_SECONDS) -> str:
    """The first line the process prints to its (piped) stdout that starts with
    `prefix`, waiting while it starts; the lines before it go to its log."""
    stream = proc.popen.stdout
    assert stream is not None, f"{proc.name}: start it with stdout_pipe=True"
    fd = stream.fileno()
    progress = _Progress([proc])
    started = time.monotonic()
    pending = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            if selector.select(timeout=0.1):
                chunk = os.read(fd, 65536)
                if not chunk:
                    # End of output: the process is gone.
                    try:
                        proc.popen.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        pass
                    raise ProcessDied(f"waiting for {prefix!r}: {death_report(proc)}")
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    line = raw.decode(errors="replace")
                    if line.startswith(prefix):
                        return line.strip()
                    with proc.log.open("a") as log:
                        log.write(line + "\n")
                continue
            if proc.died():
                raise ProcessDied(f"waiting for {prefix!r}: {death_report(proc)}")
            stalled = progress.stalled_for()
            if stalled > stall or time.monotonic() - started > limit:
                raise NotReady(f"waiting for {prefix!r}: {proc.describe()} printed no {prefix!r} line "
                               f"(no CPU used for {stalled:.0f} s); its log:\n{proc.tail()}")


def report(marks: dict[int, int]) -> str:
    """What every process logged since `marks` (pid -> log offset taken when
    the test began), newest lines last, for a failed test's report."""
    parts = []
    for p in REGISTRY:
        since = marks.get(id(p), 0)
        if p.log_size() <= since:
            continue
        parts.append(f"--- {p.describe()}; logged during the test:\n{p.tail(since=since)}")
    return "\n".join(parts)


def marks() -> dict[int, int]:
    return {id(p): p.log_size() for p in REGISTRY}
