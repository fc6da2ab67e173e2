"""Small private files of the state directory (the token secret, the revocation list), replaced atomically.

The CLI that writes them is often run with sudo while the daemon runs as its own (systemd dynamic) user:
a file left owned by root with mode 0600 would be unreadable to the daemon, which then refuses every token.
So a file written by root is given to the owner of the directory it lives in (the daemon's state directory).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``: a private temporary file (0600), fsync, rename over the old one, fsync the
    directory. A reader sees the old file or the new one, never a part."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)  # whatever the umask
            give_to_directory_owner(fh.fileno(), path.parent)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def give_to_directory_owner(fd: int, directory: Path) -> None:
    """When running as root, make the open file ``fd`` belong to whoever owns ``directory``."""
    if os.geteuid() != 0:
        return
    st = os.stat(directory)
    if st.st_uid != 0 or st.st_gid != 0:
        os.fchown(fd, st.st_uid, st.st_gid)
