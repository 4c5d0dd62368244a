"""Checks on a file a command will write, made before any work: a place it can be written, never one of its inputs
(as `cp` and `mv` refuse to overwrite their own input)."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError


def same_file(a, b) -> bool:
    """Whether two paths name one file (links followed); paths that do not exist compare resolved."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output(path, inputs=(), flag: str = "--output") -> None:
    """InputError unless `path` can be written as a file and is none of `inputs` (None entries are skipped)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, f"is a directory ({flag} names a file to write)")
    for source in inputs:
        if source is not None and same_file(path, source):
            raise InputError(path, f"is also an input of this command ({flag} {source}): refusing to overwrite it")
    folder = _nearest_existing(Path(os.path.abspath(path)).parent)
    if not folder.is_dir():
        raise InputError(path, f"cannot be created: {folder} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(path, f"cannot be written: no write permission in {folder}")
