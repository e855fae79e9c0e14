"""Real platforms for the executors that hand work to one: podman (and, where installed, Slurm).

Each is skipped, with the reason, on a machine without it; `.ci/run` installs them."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

# The image the container tests run: busybox-static as a local image, since no registry is
# reachable from the test machines (and none is needed).
TEST_IMAGE = "localhost/colonies-busybox:test"
_APPLETS = [
    "sh",
    "echo",
    "sleep",
    "cat",
    "ls",
    "env",
    "true",
    "false",
    "id",
    "hostname",
    "ps",
    "nproc",
    "dd",
    "test",
    "[",
    "printf",
]

# What podman needs on a machine like the CI's (see docs/executors.md, "Podman on a host without
# systemd"): runc (crun refuses hybrid cgroups), ulimits root can set, no systemd.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


def _podman_missing() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed (.ci/run installs it: apt-get install podman runc)"
    if shutil.which("busybox") is None or not Path("/bin/busybox").exists():
        return "busybox-static is not installed (the test image is made from it)"
    return None


@pytest.fixture(scope="session")
def podman_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local image in real podman, with the tests' containers.conf in force."""
    missing = _podman_missing()
    if missing:
        pytest.skip(missing)
    home = tmp_path_factory.mktemp("podman")
    conf = home / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    before = os.environ.get("CONTAINERS_CONF")
    os.environ["CONTAINERS_CONF"] = str(conf)
    try:
        exists = subprocess.run(["podman", "image", "exists", TEST_IMAGE], check=False)
        if exists.returncode != 0:
            rootfs = home / "rootfs"
            for d in ("bin", "tmp", "proc", "sys", "dev", "etc"):
                (rootfs / d).mkdir(parents=True)
            shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
            for applet in _APPLETS:
                (rootfs / "bin" / applet).symlink_to("busybox")
            tar = home / "rootfs.tar"
            subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], check=True)
            subprocess.run(
                ["podman", "import", "--change", "ENV PATH=/bin", str(tar), TEST_IMAGE],
                check=True,
                capture_output=True,
                timeout=60,
            )
        yield TEST_IMAGE
    finally:
        if before is None:
            os.environ.pop("CONTAINERS_CONF", None)
        else:
            os.environ["CONTAINERS_CONF"] = before
