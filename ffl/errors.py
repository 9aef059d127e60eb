"""What the library tells its callers went wrong, in a form they can show in one line."""

from __future__ import annotations

import re


class SettingError(ValueError):
    """A setting is wrong for this run. ``key`` names it in the library's own terms: a training
    option (``compile``), the networks (``archs``, ``shared``) or a setting of the method
    (``fusion.kernel_size``); ``reason`` says why and what would work. The pipeline words the key
    as params.yaml does (``pipeline.params.schema.params_key``)."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


class DataError(Exception):
    """A file of the dataset cannot be used (damaged, empty, not an image), found while a run reads
    it. The message names the file and what to do. One argument: a DataLoader worker's error is
    raised again in the training process as ``DataError(<the worker's traceback>)``."""


def unwritten(e: BaseException) -> bool:
    """torch's serializer failed to write its file: how it reports a full disk ("enforce fail at
    inline_container.cc ... unexpected pos"), with no file named."""
    return isinstance(e, RuntimeError) and any(
        s in str(e) for s in ("unexpected pos", "iostream error", "file write failed")
    )


# The last line of a printed traceback: "package.module.SomeError: the message".
_RAISED = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Interrupt|Exit): ")


def one_line(e: BaseException) -> str:
    """An exception's reason as the one line a user reads, whoever raised it:
    - an error from another process (Ray's task errors carry the original as ``cause``) is that error;
    - a traceback printed into the message (Ray, torchrun, DataLoader workers) ends in the error:
      its last line, without the error's type;
    - otherwise the first line (torch's and PIL's summaries come first, details after), with the
      first item when that line is a heading ending in ':' (torch's state-dict errors);
    - no message at all: the exception's type."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        e = cause
    lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
    if not lines:
        return type(e).__name__
    if any("Traceback (most recent call last)" in x for x in lines):
        return _RAISED.sub("", lines[-1])
    if lines[0].endswith(":") and len(lines) > 1:
        return f"{lines[0]} {lines[1][:200]}"
    return lines[0]
