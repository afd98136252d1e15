"""The one exception type that reaches the user as a one-line message."""


class LightReasonerError(Exception):
    """A problem with the user's input or environment: printed as one line, exit code 2.

    The message names the file, line or setting at fault, e.g.
    ``questions.jsonl:12: missing field 'question'``.
    """

    exit_code = 2


def line_of(error: UnicodeDecodeError) -> int:
    """The line (1-based) of the byte a UnicodeDecodeError of decoding a whole file stopped at."""
    return 1 + bytes(error.object[:error.start]).count(b"\n")
