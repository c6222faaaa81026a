"""Exception types the command line reports as one line: bad input (status 2), failed run (1)."""

__all__ = ["TrainingError", "UserInputError", "os_error_text"]


class UserInputError(Exception):
    """Bad input from the user (a missing folder, a corrupt file, an incompatible checkpoint...).

    The command line prints ``error: <message>`` and exits with status 2 instead of a traceback,
    so the message must say what is wrong and, where it can, how to fix it. ``command_line`` is
    the same message in command-line terms (``--weights PATH`` for ``weights="PATH"``) where the
    two differ; the command line prints it instead.
    """

    def __init__(self, message: str, *, command_line: str | None = None) -> None:
        super().__init__(message)
        self.command_line = message if command_line is None else command_line


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss diverged); the message says what to change."""


def os_error_text(error: OSError) -> str:
    """``<file>: <reason>`` for an OSError, e.g. ``runs/a/best.pt: No space left on device``."""
    reason = error.strerror or str(error)
    return reason if error.filename is None else f"{error.filename}: {reason}"
