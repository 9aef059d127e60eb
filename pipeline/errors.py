"""The errors the CLI turns into one line and exit code 2, with no traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (params, data, checkpoints, paths): said in one line, exit 2."""


class ParamsError(UserError):
    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}" if key else reason)
        self.key, self.reason = key, reason

    def __reduce__(self):  # copied and pickled by Ray with its arguments, not the formatted message
        return type(self), (self.key, self.reason)


class Interrupted(Exception):
    """Stopped by Ctrl-C or SIGTERM with its work kept: said in one line with how to go on, exit 130."""


class TrainingFailed(RuntimeError):
    """The run itself went wrong (a loss became NaN, no trial of a search finished): exit 1, the
    earlier results kept."""


class PeerStopped(TrainingFailed):
    """A DDP process that ended because another process of its run went away. It exits with
    ``EXIT_CODE``, so that the launcher can name the process whose failure came first (several
    fail within one of torchrun's polls, and its own "first failure" is then the lowest rank)."""

    EXIT_CODE = 3
