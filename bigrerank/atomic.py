"""Atomic writes: a file or directory appears complete under its final name, or not at all."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path, mode: str = "w", **open_kwargs):
    """Open a temp file beside `path`; on success fsync and rename it over `path`, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would outlive the rename
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def apply_umask(directory: Path) -> None:
    """Give every file under `directory` the mode a plain `open` would (0666 less the umask); some writers
    (safetensors) create theirs 0600."""
    for path in Path(directory).rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~_umask())


def temp_dir_beside(path: Path) -> Path:
    """A new hidden directory next to `path` (same file system, so a rename moves it into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would outlive the rename
    return tmp


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temp directory beside `path`; on success it replaces `path` whole, else it is removed."""
    path = Path(path)
    tmp = temp_dir_beside(path)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
