"""Files written whole or not at all: the one atomic write every writer of the package uses
(model exports, pictures, histories, sweep tables)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_atomically(path: str | os.PathLike[str], data: bytes) -> None:
    """Write data to a temporary file beside path, then rename it over path: a reader (or a
    crash) sees the old file or the complete new one, never part of one. The file gets the
    usual permissions (0o666 minus the umask), unlike mkstemp's 0o600."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | os.PathLike[str], text: str) -> None:
    """write_atomically of text as UTF-8."""
    write_atomically(path, text.encode("utf-8"))
