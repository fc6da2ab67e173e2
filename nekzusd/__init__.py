"""nekzusd: one HTTP + WebSocket API over Docker and Kubernetes containers."""

import os as _os
import pwd as _pwd

__version__ = "0.1.0"


def _ensure_home() -> None:
    """aiodocker calls ``Path.home()`` when it is imported (a rootless socket path under ~/.docker), and
    ``Path.home()`` raises RuntimeError when neither $HOME nor the passwd database knows the user: the case
    of a systemd ``DynamicUser=`` service on a system without libnss-systemd. Such a process gets
    ``/nonexistent`` (Debian's home for users without one): nothing is read from a home, nothing fails."""
    if _os.environ.get("HOME"):
        return
    try:
        _pwd.getpwuid(_os.getuid())
    except KeyError:
        _os.environ["HOME"] = "/nonexistent"


_ensure_home()
