"""The local image the container tests (and `make bench-platforms`) run in real podman:
busybox-static as an image, since no registry is reachable from the test machines (and none is
needed), and the podman configuration a machine like the CI's needs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

__all__ = ["TEST_IMAGE", "containers_conf", "local_image", "podman_missing"]

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

# What podman needs on a machine like the CI's (see docs/executors.md, "Container executor"):
# runc (crun refuses hybrid cgroups), ulimits root can set, no systemd.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


def podman_missing() -> str | None:
    """Why the podman tests cannot run here, or None."""
    if shutil.which("podman") is None:
        return "podman is not installed (.ci/run installs it: apt-get install podman runc)"
    if not Path("/bin/busybox").exists():
        return "busybox-static is not installed (the test image is made from it)"
    return None


def containers_conf(home: Path) -> Path:
    """The configuration, written in ``home``: name it by CONTAINERS_CONF."""
    conf = home / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    return conf


def local_image(home: Path) -> str:
    """The test image, imported into podman unless it is there already."""
    exists = subprocess.run(["podman", "image", "exists", TEST_IMAGE], check=False)
    if exists.returncode == 0:
        return TEST_IMAGE
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
    return TEST_IMAGE
