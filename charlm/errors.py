"""The exceptions the CLIs report: bad input (one line, exit 2) and a stop that cannot wait."""


class CharlmError(Exception):
    """Bad input (a file, a flag, a checkpoint) that the CLIs report as one line, without a traceback."""


class Interrupted(KeyboardInterrupt):
    """A second stop signal while the first is being handled: stop at once. Carries the signal so
    the CLI exits 128 + its number (143 for SIGTERM), as a shell expects."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
