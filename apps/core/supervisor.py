"""A small process supervisor for `make run`: start the product's processes, restart any that crash,
and stop them all, in reverse order, on Ctrl-C or SIGTERM.

Each child runs in its own session, so a Ctrl-C reaches only the supervisor, which then shuts the
children down in an orderly way instead of letting them all die at once mid-request.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field

logger = logging.getLogger("atelier.supervisor")

RESTART_BACKOFF_MAX = 30.0
CRASH_LOOP_LIMIT = 5  # crashes within CRASH_LOOP_WINDOW seconds before giving up on the whole stack
CRASH_LOOP_WINDOW = 60.0


class CrashLoop(RuntimeError):
    pass


@dataclass
class Program:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    crashes: list[float] = field(default_factory=list)
    next_start: float = 0.0

    def start(self) -> None:
        logger.info("starting %s: %s", self.name, " ".join(self.argv))
        self.process = subprocess.Popen(
            self.argv, env={**os.environ, **self.env}, stdin=subprocess.DEVNULL, start_new_session=True
        )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float) -> None:
        if not self.running():
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop within %.0f s; killing it", self.name, timeout)
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


class Supervisor:
    def __init__(self, programs: list[Program], *, stop_timeout: float = 15.0) -> None:
        self.programs = programs
        self.stop_timeout = stop_timeout
        self._stopping = False

    def request_stop(self, signum: int, _frame) -> None:
        logger.info("received %s; stopping", signal.Signals(signum).name)
        self._stopping = True

    def run(self, *, poll_interval: float = 0.5) -> None:
        """Block until a stop is requested; restart crashed programs with exponential backoff."""
        previous = {sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for program in self.programs:
                program.start()
            while not self._stopping:
                time.sleep(poll_interval)
                for program in self.programs:
                    self._watch(program)
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _watch(self, program: Program) -> None:
        now = time.monotonic()
        if program.running() or self._stopping:
            return
        if program.next_start == 0.0:  # it just exited: schedule a restart
            code = program.process.returncode if program.process else None
            program.crashes = [t for t in program.crashes if now - t < CRASH_LOOP_WINDOW] + [now]
            if len(program.crashes) > CRASH_LOOP_LIMIT:
                raise CrashLoop(f"{program.name} crashed {len(program.crashes)} times in a minute; giving up")
            delay = min(RESTART_BACKOFF_MAX, 2 ** (len(program.crashes) - 1))
            logger.error("%s exited with code %s; restarting in %.0f s", program.name, code, delay)
            program.next_start = now + delay
        elif now >= program.next_start:
            program.next_start = 0.0
            program.start()

    def stop(self) -> None:
        for program in reversed(self.programs):
            program.stop(self.stop_timeout)
