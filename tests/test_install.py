"""`make install` / `make uninstall` into a DESTDIR: the file list, a working venv that names its final
location, the config never overwritten, the unit accepted by systemd-analyze."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.harness.machine import copy_checkout

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "/srv/nekzusd-test"  # not the default, so that the unit's paths must follow it


def make(src: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``make`` in ``src``, a copy of the checkout as a user has it: pip builds nekzusd in the source tree,
    and a copy of its own needs no lock against the other workers' builds (the .deb's took 90 s)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(["make", "--no-print-directory", "-C", str(src), *args], capture_output=True,
                            text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


@pytest.mark.slow
def test_install_into_destdir_and_uninstall(tmp_path: Path) -> None:
    dest, src = tmp_path / "dest", tmp_path / "src"
    copy_checkout(ROOT, src)
    make(src, "install", f"DESTDIR={dest}", f"PREFIX={PREFIX}")
    venv = dest / PREFIX.lstrip("/")
    files = files_under(dest)
    outside_venv = {f for f in files if not f.startswith(PREFIX.lstrip("/") + "/")}
    assert outside_venv == {"etc/nekzusd/nekzusd.yaml", "etc/systemd/system/nekzusd.service"}
    site = next(venv.glob("lib/python3*/site-packages"))
    for path in ("bin/nekzusd", "bin/python", "pyvenv.cfg"):
        assert (venv / path).exists(), path
    assert (site / "nekzusd" / "templates" / "status.html").is_file(), "templates must be installed"
    assert (dest / "etc/nekzusd/nekzusd.yaml").read_text() == (ROOT / "etc/nekzusd.yaml").read_text()
    assert oct((dest / "etc/systemd/system/nekzusd.service").stat().st_mode & 0o777) == "0o644"

    # Staged, but ready for its final place: scripts name PREFIX, never the staging directory.
    assert (venv / "bin/nekzusd").read_text().splitlines()[0] == f"#!{PREFIX}/bin/python3"
    for script in (venv / "bin").iterdir():
        if script.is_file() and not script.is_symlink():
            assert str(dest) not in script.read_text(errors="replace"), script

    unit = (dest / "etc/systemd/system/nekzusd.service").read_text()
    assert f"ExecStart={PREFIX}/bin/nekzusd serve" in unit and "/opt/nekzusd" not in unit
    assert unit == (ROOT / "systemd/nekzusd.service").read_text().replace("/opt/nekzusd", PREFIX)

    # The installed daemon runs (from the staging place, through its own interpreter).
    run = subprocess.run([str(venv / "bin/python"), "-m", "nekzusd", "check-config", "--config",
                          str(dest / "etc/nekzusd/nekzusd.yaml")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr

    analyze = shutil.which("systemd-analyze")
    if analyze is not None:  # the installed unit, pointed at the staged executable, passes verify
        staged = tmp_path / "nekzusd.service"
        staged.write_text(unit.replace(f"{PREFIX}/bin/", f"{venv}/bin/"))  # ExecStart and ExecReload
        check = subprocess.run([analyze, "verify", str(staged)], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0 and check.stderr.strip() == "", check.stderr

    # A second install keeps the user's config. (Without the dependencies, which the first install proved:
    # this step is about the config, and they are 11 of its 19 CPU-seconds.)
    (dest / "etc/nekzusd/nekzusd.yaml").write_text("apps: [{id: mine, name: Mine}]\n")
    second = make(src, "install", f"DESTDIR={dest}", f"PREFIX={PREFIX}", "PIP_INSTALL_ARGS=--no-deps")
    assert "keeping the existing /etc/nekzusd/nekzusd.yaml" in second.stdout
    assert (dest / "etc/nekzusd/nekzusd.yaml").read_text() == "apps: [{id: mine, name: Mine}]\n"

    make(src, "uninstall", f"DESTDIR={dest}", f"PREFIX={PREFIX}")
    assert files_under(dest) == {"etc/nekzusd/nekzusd.yaml"}


def test_uninstall_refuses_a_prefix_that_is_not_its_venv(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    precious = dest / "srv/data/keep.txt"
    precious.parent.mkdir(parents=True)
    precious.write_text("do not delete")
    result = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "uninstall", f"DESTDIR={dest}",
                             "PREFIX=/srv/data"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "not a nekzusd venv" in result.stderr
    assert precious.read_text() == "do not delete"


@pytest.mark.parametrize("prefix", ["relative/dir", ""])
def test_install_needs_an_absolute_prefix(tmp_path: Path, prefix: str) -> None:
    result = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "install",
                             f"DESTDIR={tmp_path}", f"PREFIX={prefix}"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "PREFIX must be an absolute path" in result.stderr
    assert not any(tmp_path.iterdir())
