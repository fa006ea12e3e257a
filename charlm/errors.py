"""The exceptions the CLIs report (bad input: one line, exit 2; a stop that cannot wait) and the
signal handlers that turn Ctrl-C and SIGTERM into a request a loop honours at its next step."""

from __future__ import annotations

import signal
import threading


class CharlmError(Exception):
    """Bad input (a file, a flag, a checkpoint) that the CLIs report as one line, without a traceback."""


class Interrupted(KeyboardInterrupt):
    """A second stop signal while the first is being handled: stop at once. Carries the signal so
    the CLI exits 128 + its number (143 for SIGTERM), as a shell expects."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StopRequests:
    """Turns SIGINT (Ctrl-C) and SIGTERM into a request that the loop honours after the current step.

    A second signal while the first is handled (a save in progress, say) aborts at once with
    `Interrupted` (a KeyboardInterrupt that names the signal); the orbax saves are atomic, so the checkpoints on disk stay readable.
    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    SIGNALS: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signal: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signal is not None:
            raise Interrupted(signum)
        self.signal = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class CtrlC(StopRequests):
    """Ctrl-C while text streams: a request honoured after the chunk in hand (SIGTERM keeps its default).

    Not the default KeyboardInterrupt: Python swallows one raised inside a garbage-collection
    callback ("Exception ignored in: _xla_gc_callback"), which JAX runs often while sampling,
    so about one Ctrl-C in ten was lost and the stream went on."""

    SIGNALS = (signal.SIGINT,)
