"""The one exception type charlm raises for problems with what the user gave it."""


class CharlmError(Exception):
    """Bad input (a file, a flag, a checkpoint) that the CLIs report as one line, without a traceback."""
