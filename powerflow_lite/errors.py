"""The one exception type that means "the user asked for something we cannot do".

Library code raises `PowerflowError` with a message that names the bad input and
what to do instead; the CLI prints that one line on stderr and exits with code 2.
Anything else escaping is a bug in powerflow-lite and keeps its traceback.
"""


class PowerflowError(Exception):
    """Bad input or an unsupported setup, described in one line for the user."""

    def __init__(self, message: str, shared: bool = False):
        super().__init__(message)
        self.shared = shared  # every process of a launch raised it (distributed.Ranks.agree): rank 0 alone says it


class Stopped(Exception):
    """The run stopped cleanly on request (a signal): `str(err)` says where it stands; exit with `code`."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (libraries' messages run to many lines), or its type's name."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
