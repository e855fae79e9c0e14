"""The wheel installs a working ``colonies`` command and claims no generic import names."""

from __future__ import annotations

import contextlib
import email
import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
import venv
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[1]
# The venvs the wheel is installed into, one per set of requirements (see _venv_with).
VENVS = ROOT / "build" / "test-venvs"


def _pip(python: Path, *args: str) -> None:
    """This pip, on the environment of ``python``."""
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), *args],
        check=True,
        timeout=300,
    )


def _requirements(wheel: Path) -> list[str]:
    """What the wheel declares it needs (its METADATA's Requires-Dist), sorted."""
    with zipfile.ZipFile(wheel) as zf:
        (meta,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        message = email.message_from_bytes(zf.read(meta))
    return sorted(message.get_all("Requires-Dist") or [])


@contextlib.contextmanager
def _kept_venv(
    key: list[object], make: Callable[[Path], None], again: Callable[[Path], None]
) -> Iterator[Path]:
    """A venv kept under build/ for ``key``: made the first time by ``make`` (given its
    python), and handed to ``again`` on later runs (a failure there makes it anew, as the first
    time). No pip of its own in the venv: this pip installs into it (--python). Held under a
    lock: two runs of this test at once take turns."""
    name = hashlib.sha256(json.dumps([sys.version, sys.base_prefix, *key]).encode()).hexdigest()
    env_dir = VENVS / name[:16]
    ready = env_dir / ".ready"  # written last: a venv left half made is made again
    py = env_dir / "bin" / "python"
    VENVS.mkdir(parents=True, exist_ok=True)
    with (VENVS / f"{env_dir.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready.exists():
            try:
                again(py)
            except subprocess.CalledProcessError:
                ready.unlink()  # not as it was left (a package removed by hand?): made anew
        if not ready.exists():
            shutil.rmtree(env_dir, ignore_errors=True)
            venv.EnvBuilder(with_pip=False).create(env_dir)
            make(py)
            ready.touch()
        yield env_dir


def _venv_with(wheel: Path) -> contextlib.AbstractContextManager[Path]:
    """A venv holding ``wheel`` and nothing else but what it declares it needs.

    The first time for a set of requirements (and interpreter), a new venv: the wheel installed
    into it resolves and installs its dependencies from the index. That venv is kept under
    build/, keyed by those requirements; a later run with the same ones uninstalls the previous
    colonyos from it and installs the new wheel with --no-index, so every requirement the wheel
    declares must already be met there, by an environment made from exactly those requirements.
    A changed requirement makes a new venv. Fetching and unpacking the dependencies is most of
    this test's time, and it proves nothing of this project's packaging the second time."""

    def again(py: Path) -> None:
        _pip(py, "uninstall", "--quiet", "--yes", "colonyos")
        _pip(py, "install", "--quiet", "--no-index", str(wheel))

    return _kept_venv(
        [_requirements(wheel)], lambda py: _pip(py, "install", "--quiet", str(wheel)), again
    )


def _build_venv() -> contextlib.AbstractContextManager[Path]:
    """A venv holding what pyproject's [build-system] requires, and nothing else: pip's own
    isolated build makes such an environment anew for every build (most of the build's time),
    this one is kept under build/, keyed by those requirements, as the venvs above."""
    requires = sorted(_pyproject()["build-system"]["requires"])
    return _kept_venv(
        ["build", requires], lambda py: _pip(py, "install", "--quiet", *requires), lambda _: None
    )


def _pyproject() -> dict[str, Any]:
    import tomllib

    loaded: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return loaded


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_wheel_installs_in_a_venv_of_its_own_requirements(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    with _build_venv() as build_env:
        # Built in that environment of the build requirements alone, without pip's isolation.
        _pip(
            build_env / "bin" / "python",
            "wheel",
            "--quiet",
            "--no-build-isolation",
            "--no-deps",
            "-w",
            str(dist),
            str(ROOT),
        )
    (wheel,) = dist.glob("colonyos-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        top = {name.split("/")[0] for name in zf.namelist()}
        names = zf.namelist()
    assert {t for t in top if not t.endswith(".dist-info")} == {"colonyos"}
    for module in (
        "colonyos/cli/main.py",
        "colonyos/executors/echo.py",
        "colonyos/py.typed",
        "colonyos/nats.conf",  # the server config of `colonies server start`, anywhere
        "colonyos/cli/dashboard/static/index.html",  # the dashboard's page, served as it is
        "colonyos/cli/dashboard/static/app.js",
    ):
        assert module in names

    with _venv_with(wheel) as env_dir:
        _check_installed(env_dir, tmp_path)


def _check_installed(env_dir: Path, tmp_path: Path) -> None:
    py = env_dir / "bin" / "python"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [str(env_dir / "bin" / "colonies"), "--help"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "function" in result.stdout and "executor" in result.stdout
    probe = subprocess.run(
        [
            str(py),
            "-c",
            "import importlib.util as u; "
            "print(u.find_spec('cli'), u.find_spec('executors'), "
            "u.find_spec('colonyos.executors.echo') is not None)",
        ],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.stdout.split() == ["None", "None", "True"], probe.stderr


def test_every_package_is_listed_for_the_wheel() -> None:
    """setuptools takes the packages pyproject lists; one left out is in today's wheels only
    by a deprecated fallback ("Package would be ignored"), and a broker without it does not
    start."""
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    found = {
        ".".join(("colonyos", *init.parent.relative_to(ROOT / "colonyos").parts))
        for init in (ROOT / "colonyos").rglob("__init__.py")
    }
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
