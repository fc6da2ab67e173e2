"""The state directory and the files in it are private to the daemon's user: 0700 and 0600.

The directory holds the JWT secret (anyone who reads it mints tokens, and a token is root on the host
through the Docker socket), the TLS key and the database of approved apps. Whichever feature touches it
first (the certificate, the secret, the database, ``token create``) calls ``ensure_state_dir``, so its mode
does not depend on the order of start-up nor on the umask.

A directory that already exists with looser permissions is tightened when the daemon owns it (systemd's
``StateDirectory=`` makes it 0755 for the service user, for instance). One the daemon cannot fix is
refused with a message that says what to do, rather than used: a directory owned by another user (that
user could replace the secret and mint tokens), or root's with access for others. A root-owned
directory with group access only is the administrator's deliberate choice (``root:nekzusd 0770``):
accepted, with a warning.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600


class StateDirError(Exception):
    """The state directory cannot be created or made private; the message says why and how to fix it."""


def judge(owner: int, mode: int, euid: int) -> str:
    """What to do with an existing directory: "ok", "tighten", "warn" or "refuse" (pure, for tests)."""
    if owner == euid:
        return "tighten" if mode & 0o077 else "ok"
    if owner != 0:
        return "refuse"
    if mode & 0o007:
        return "refuse"
    return "warn" if mode & 0o070 else "ok"


def ensure_state_dir(path: Path) -> Path:
    """Create ``path`` 0700 (parents as the umask says), or check and tighten an existing one."""
    try:
        path.mkdir(mode=DIR_MODE, parents=True)
    except FileExistsError:
        pass
    except OSError as exc:
        raise StateDirError(f"cannot create state directory {path}: {exc.strerror or exc}") from None
    else:
        os.chmod(path, DIR_MODE)  # mkdir's mode is filtered by the umask; make it exact
        return path
    try:
        st = path.stat()
    except OSError as exc:
        raise StateDirError(f"cannot use state directory {path}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"state directory {path} is not a directory")
    mode, euid = stat.S_IMODE(st.st_mode), os.geteuid()
    verdict = judge(st.st_uid, mode, euid)
    if verdict == "tighten":
        os.chmod(path, DIR_MODE)
        log.warning("state directory %s was mode %o; tightened to %o", path, mode, DIR_MODE)
    elif verdict == "warn":
        log.warning("state directory %s is mode %o (owned by root): its group can read the JWT secret and the "
                    "TLS key", path, mode)
    elif verdict == "refuse":
        if st.st_uid not in (euid, 0):
            why = f"is owned by uid {st.st_uid}, not by the user nekzusd runs as (uid {euid}) or root"
        else:
            why = f"is mode {mode:o} and owned by root, so nekzusd (uid {euid}) cannot make it private"
        raise StateDirError(f"state directory {path} {why}: it holds the JWT secret and the TLS key. "
                             f"Run: chown {euid} {path} && chmod 700 {path}")
    return path


def tighten_file(path: Path) -> None:
    """Make an existing file of ours 0600 (a file left by an older version or a careless copy)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077 and st.st_uid == os.geteuid():
        os.chmod(path, FILE_MODE)
        log.warning("%s was mode %o; tightened to %o", path, mode, FILE_MODE)


def create_private(path: Path) -> None:
    """Make sure ``path`` exists and is 0600 before another library creates it with the umask's mode."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        st = os.fstat(fd)
        mode = stat.S_IMODE(st.st_mode)
        if mode != FILE_MODE and st.st_uid == os.geteuid():
            if st.st_size:  # an existing database: say so; a new one merely met the umask
                log.warning("%s was mode %o; tightened to %o", path, mode, FILE_MODE)
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (0600 whatever the umask or a previous file's mode), atomically: a private
    temporary file, fsync, rename over the old one, fsync the directory. A reader sees the old file or the
    new one, never a part; a crash leaves the old file or none, never half a key."""
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), FILE_MODE)  # whatever the umask
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
    """When running as root, make the open file ``fd`` belong to whoever owns ``directory``.

    The CLI that writes state files is often run with sudo while the daemon runs as its own (systemd dynamic)
    user: a file left owned by root with mode 0600 would be unreadable to the daemon, which would then refuse
    every token.
    """
    if os.geteuid() != 0:
        return
    st = os.stat(directory)
    if st.st_uid != 0 or st.st_gid != 0:
        os.fchown(fd, st.st_uid, st.st_gid)
