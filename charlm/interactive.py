"""`sample.py --interactive`: type a prime, watch its continuation appear; change settings between
prompts with `:` commands. Reads any text stream, so tests drive it through a pipe.

Each prompt is sampled with the current seed, which then moves on by one: the same prime twice
gives two different continuations, and a session started with --seed replays exactly.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable
from typing import TextIO

from charlm.config import RunConfig, SamplingSettings
from charlm.data import Vocab
from charlm.errors import CharlmError, CtrlC
from charlm.sampling import stream

HELP = """Type a prime and press Enter to continue it. Commands:
  :t T   temperature (0: argmax)        :k K|off  top-k          :p P|off  top-p
  :r R   repetition penalty (1: off)    :g N|off  no-repeat n-gram
  :n N   length of each continuation    :s N      seed           :show     current settings
  :h     this help                      :q        quit (or Ctrl-D)"""

_FIELDS = {":t": ("temperature", float), ":k": ("top_k", int), ":p": ("top_p", float),
           ":r": ("repetition_penalty", float), ":g": ("no_repeat_ngram", int)}


def write_stream(pieces: Iterable[str], out: TextIO) -> tuple[str, bool]:
    """Writes text as it comes and flushes each piece. Returns (all text, interrupted by Ctrl-C)."""
    text = ""
    with CtrlC() as ctrl_c:
        for piece in pieces:
            text += piece
            out.write(piece)
            out.flush()
            if ctrl_c.signal is not None:
                return text, True
    return text, False


class Session:
    """The settings between prompts, and what a command line does to them."""

    def __init__(self, settings: SamplingSettings, length: int, seed: int):
        self.settings, self.length, self.seed = settings, length, seed

    def describe(self) -> str:
        s = self.settings
        return (f"temperature {s.temperature:g}, top-k {s.top_k or 'off'}, top-p {s.top_p or 'off'}, "
                f"repetition penalty {s.repetition_penalty:g}, no-repeat n-gram {s.no_repeat_ngram or 'off'}, "
                f"length {self.length}, seed {self.seed}")

    def command(self, line: str) -> str:
        """Applies one `:` command; returns the message to show. Raises CharlmError on a bad one."""
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if name in (":h", ":help"):
            return HELP
        if name == ":show":
            return self.describe()
        if name in _FIELDS or name in (":n", ":s"):
            field, kind = _FIELDS.get(name, (name, int))
            if name in (":k", ":p", ":g") and arg == "off":
                value = None
            else:
                try:
                    value = kind(arg)
                except ValueError:
                    raise CharlmError(f"{name} needs a number, got {arg!r} (:h for help)") from None
            if name == ":n":
                if value <= 0:
                    raise CharlmError(f":n needs a positive length, got {value}")
                self.length = value
            elif name == ":s":
                self.seed = value
            else:
                self.settings = dataclasses.replace(self.settings, **{field: value})
            return self.describe()
        raise CharlmError(f"unknown command {name!r} (:h for help)")


def run(params, cfg: RunConfig, vocab: Vocab, session: Session, *, context: str = "stateful",
        precision: str | None = None, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    """The prompt loop; returns the exit code (0 at :q or end of input, 130 at Ctrl-C at a prompt)."""
    print(HELP.splitlines()[0] + " :h for commands, :q to quit.", file=stdout)
    while True:
        stdout.write("> ")
        stdout.flush()
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            print(file=stdout)
            return 130
        if not line or line.strip() in (":q", ":quit"):
            if not line:
                print(file=stdout)
            return 0
        line = line.rstrip("\n")
        if not line.strip():
            continue
        try:
            if line.startswith(":"):
                print(session.command(line), file=stdout)
                continue
            pieces = stream(params, cfg, vocab, line, session.settings, length=session.length, seed=session.seed,
                            context=context, precision=precision)
            session.seed += 1
            stdout.write(line)
            _, interrupted = write_stream((p[0] for p in pieces), stdout)
            print(" [stopped]" if interrupted else "", file=stdout)
        except CharlmError as e:
            print(f"error: {e}", file=stdout)
