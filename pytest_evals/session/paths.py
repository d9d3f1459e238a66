"""Whether a file the run will write can be created, checked at start-up with the true reason."""

from __future__ import annotations

import errno
import os
import tempfile


def creatable_problem(path: "os.PathLike[str]", what: str, fix: str) -> str | None:
    """Why a file could not be created at ``path`` (missing folders are created, as pytest's --junitxml does),
    or None: ``{path}: {what}: {why}; {fix}``. Leaves nothing behind."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{path}: {what}: {parent} is a file, not a folder; {fix}"
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        why = {
            errno.EACCES: f"no permission to create files in {parent}",
            errno.EPERM: f"no permission to create files in {parent}",
            errno.EROFS: f"{parent} is on a read-only file system",
            errno.ENOSPC: f"no space left on the device of {parent}",
            # the folder exists, yet creating a file in it says it does not: /proc, /sys and the like
            errno.ENOENT: f"{parent} does not take new files (a virtual file system such as /proc or /sys)",
        }.get(exc.errno or 0, f"{parent}: {exc.strerror or exc}")
        return f"{path}: {what}: {why}; {fix}"
    return None
