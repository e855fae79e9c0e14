"""Describing the machine an executor runs on, from a fake /proc and /sys tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from colonyos import machine
from colonyos.machine import Sources, describe, parse_gpus
from colonyos.models import GPU

GiB = 2**30

MEMINFO = "MemTotal:       16384000 kB\nMemFree:         1000000 kB\n"
CPUINFO = "processor\t: 0\nmodel name\t: Fake CPU @ 3.00GHz\n\nprocessor\t: 1\n"


def fake_root(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def sources(root: Path, *, cpus: int = 8, gpus: str | None = None) -> Sources:
    return Sources(
        root=root,
        cpu_count=lambda: cpus,
        free_bytes=lambda _: 100 * GiB + 12345,
        gpu_query=lambda: gpus,
        system=lambda: "Linux",
        machine=lambda: "aarch64",
    )


def test_a_plain_machine(tmp_path: Path) -> None:
    root = fake_root(tmp_path, {"proc/meminfo": MEMINFO, "proc/cpuinfo": CPUINFO})
    hw = describe(tmp_path, sources(root))
    assert hw.cpu == "8" and hw.cores == 8
    assert hw.mem == "16000Mi"  # 16,384,000 kB, rounded down to whole MiB
    assert hw.storage == "100Gi"
    assert hw.nodes == 1
    assert hw.gpu == GPU()  # no nvidia-smi: no GPU
    assert (hw.platform, hw.architecture) == ("linux", "arm64")  # as Go names them
    assert hw.model == "Fake CPU @ 3.00GHz"


def test_cgroup_v2_limits_are_honoured_up_the_tree(tmp_path: Path) -> None:
    root = fake_root(
        tmp_path,
        {
            "proc/meminfo": MEMINFO,
            "proc/self/cgroup": "0::/box/job\n",
            "proc/self/mountinfo": (
                "22 1 0:21 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
            ),
            "sys/fs/cgroup/box/cpu.max": "150000 100000\n",  # 1.5 CPUs, on the parent
            "sys/fs/cgroup/box/memory.max": "max\n",
            "sys/fs/cgroup/box/job/cpu.max": "max 100000\n",
            "sys/fs/cgroup/box/job/memory.max": str(4 * GiB) + "\n",
        },
    )
    hw = describe(tmp_path, sources(root))
    assert hw.cpu == "1500m" and hw.cores == 2
    assert hw.mem == "4Gi"


def test_cgroup_v1_limits_are_honoured(tmp_path: Path) -> None:
    mounts = (
        "30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "31 25 0:27 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    )
    root = fake_root(
        tmp_path,
        {
            "proc/meminfo": MEMINFO,
            "proc/self/cgroup": "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n",
            "proc/self/mountinfo": mounts,
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000\n",
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
            # The memory mount's root is our group (a cgroup namespace): the mount is the group.
            "sys/fs/cgroup/memory/memory.limit_in_bytes": str(2 * GiB),
        },
    )
    hw = describe(tmp_path, sources(root))
    assert hw.cpu == "2" and hw.cores == 2
    assert hw.mem == "2Gi"


def test_cgroup_v1_without_a_limit(tmp_path: Path) -> None:
    root = fake_root(
        tmp_path,
        {
            "proc/meminfo": MEMINFO,
            "proc/self/cgroup": "4:memory:/\n3:cpu:/\n",
            "proc/self/mountinfo": (
                "30 25 0:26 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
                "31 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
            ),
            "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n",
            "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
            "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
        },
    )
    hw = describe(tmp_path, sources(root, cpus=4))
    assert (hw.cpu, hw.mem) == ("4", "16000Mi")


def test_a_quota_never_raises_what_the_affinity_allows(tmp_path: Path) -> None:
    root = fake_root(
        tmp_path,
        {
            "proc/self/cgroup": "0::/\n",
            "proc/self/mountinfo": "22 1 0:21 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
            "sys/fs/cgroup/cpu.max": "800000 100000\n",
        },
    )
    hw = describe(tmp_path, sources(root, cpus=2))
    assert (hw.cpu, hw.cores) == ("2", 2)
    assert hw.mem == ""  # nothing to read: not stated rather than wrong


def test_gpus_from_nvidia_smi(tmp_path: Path) -> None:
    csv = (
        "NVIDIA A100-SXM4-40GB, 40960 MiB\n"
        "NVIDIA A100-SXM4-40GB, 40960 MiB\n"
        "NVIDIA A100-SXM4-80GB, 81920 MiB\n"
    )
    hw = describe(tmp_path, sources(fake_root(tmp_path, {}), gpus=csv))
    assert hw.gpu == GPU(name="NVIDIA A100-SXM4-40GB", mem="40Gi", count=3)
    assert parse_gpus("") == GPU()
    assert parse_gpus("Tesla T4, [N/A]\n") == GPU(name="Tesla T4", count=1)


def test_nvidia_smi_that_fails_means_no_gpu(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    assert machine.query_gpus() is None
    fake.write_text("#!/bin/sh\necho 'Tesla T4, 15360 MiB'\n")
    assert parse_gpus(machine.query_gpus() or "") == GPU(name="Tesla T4", mem="15Gi", count=1)


def test_this_machine() -> None:
    hw = describe()
    assert hw.cores >= 1 and hw.cpu and hw.nodes == 1
    assert hw.platform == sys.platform.replace("win32", "windows")
    assert hw.architecture


def test_describing_needs_only_the_standard_library() -> None:
    code = (
        "import sys; from colonyos import machine; machine.describe(); "
        "bad = {'psutil', 'sqlite_utils', 'rich', 'typer'} & set(sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
