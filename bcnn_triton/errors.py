"""The exception type for problems in what the user gave: paths, files, flags, checkpoints."""

__all__ = ["UserInputError"]


class UserInputError(Exception):
    """Bad input from the user (a missing folder, a corrupt file, an incompatible checkpoint...).

    The command line prints ``error: <message>`` and exits with status 2 instead of a traceback,
    so the message must say what is wrong and, where it can, how to fix it.
    """
