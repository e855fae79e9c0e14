"""What the machine an executor runs on offers: cores, memory, GPUs, storage, platform.

An executor registers this description unless it is given capabilities, so that a spec asking
for ``"cpu": "1000m", "mem": "10Gi"`` runs on any executor of a machine that has them. Only the
standard library is used (executors need nothing beyond nats-py and msgspec):

* cores: the CPUs this process may run on (its affinity), and a CPU quota of its cgroup
  (v1 or v2) when one is set: a container given 1.5 CPUs offers ``cpu: "1500m"``;
* memory: ``MemTotal`` of ``/proc/meminfo``, or the cgroup's memory limit when lower;
* storage: the free space of the work directory's file system;
* GPUs: ``nvidia-smi --query-gpu=name,memory.total`` when ``nvidia-smi`` is on PATH (count,
  the most common name, the smallest memory); none otherwise;
* nodes 1, platform and architecture as Go names them (``linux``/``amd64``), as Colonies does.

Every reader can be replaced (:class:`Sources`), so tests describe a fake machine.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import math
import os
import platform
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from colonyos.models import GPU, Capabilities, Hardware
from colonyos.resources import format_bytes, format_cpu, parse_bytes

__all__ = ["Sources", "capabilities", "describe", "parse_gpus"]

logger = logging.getLogger(__name__)

_GPU_QUERY = ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"]
_GPU_QUERY_TIMEOUT_S = 10.0
_MI = 2**20

# platform.machine() spellings -> Go's GOARCH, which Colonies' executors report.
_ARCHITECTURES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
    "x86": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def _usable_cpus() -> int:
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def query_gpus() -> str | None:
    """What ``nvidia-smi`` says about the GPUs (CSV lines), or None without it."""
    if shutil.which(_GPU_QUERY[0]) is None:
        return None
    try:
        done = subprocess.run(
            _GPU_QUERY, capture_output=True, text=True, timeout=_GPU_QUERY_TIMEOUT_S, check=True
        )
    except (OSError, subprocess.SubprocessError) as err:
        logger.warning("nvidia-smi did not answer (%s): describing no GPUs", err)
        return None
    return done.stdout


@dataclass(frozen=True, slots=True)
class Sources:
    """Where the description comes from: ``root`` holds ``proc/`` and ``sys/`` (``/`` on a real
    machine, a fake tree in tests), the other readers are called once each."""

    root: Path = Path("/")
    cpu_count: Callable[[], int] = _usable_cpus
    free_bytes: Callable[[Path], int] = _free_bytes
    gpu_query: Callable[[], str | None] = query_gpus
    system: Callable[[], str] = platform.system
    machine: Callable[[], str] = platform.machine


def describe(work_dir: str | os.PathLike[str] = ".", sources: Sources | None = None) -> Hardware:
    """The machine this process runs on, as one Colonies hardware entry."""
    src = sources or Sources()
    cores = max(1, src.cpu_count())
    millis = cores * 1000
    quota = _cgroup_cpu_quota_millis(src.root)
    if quota is not None:
        millis = max(1, min(millis, quota))
    mem = _meminfo_total(src.root)
    limit = _cgroup_memory_limit(src.root)
    if limit is not None:
        mem = limit if mem is None else min(mem, limit)
    try:
        storage: int | None = src.free_bytes(Path(work_dir))
    except OSError as err:
        logger.warning(
            "cannot read the free space of %s (%s): storage not described", work_dir, err
        )
        storage = None
    return Hardware(
        model=_cpu_model(src.root),
        nodes=1,
        cpu=format_cpu(millis),
        cores=min(cores, math.ceil(millis / 1000)),
        mem=_whole_mebibytes(mem),
        storage=_whole_mebibytes(storage),
        gpu=parse_gpus(src.gpu_query() or ""),
        platform=src.system().lower(),
        architecture=_ARCHITECTURES.get(src.machine().lower(), src.machine().lower()),
    )


def capabilities(work_dir: str | os.PathLike[str] = ".") -> Capabilities:
    """What an executor registers when it is told nothing: this machine."""
    return Capabilities(hardware=[describe(work_dir)])


def parse_gpus(csv: str) -> GPU:
    """``nvidia-smi --query-gpu=name,memory.total --format=csv,noheader`` output as one GPU
    entry: the count, the most common name and the smallest memory (what any of them has)."""
    names: list[str] = []
    mems: list[int] = []
    for line in csv.splitlines():
        name, _, mem = line.rpartition(",")
        if not name.strip():
            continue
        names.append(name.strip())
        with contextlib.suppress(ValueError):
            mems.append(parse_bytes(mem.strip()))
    if not names:
        return GPU()
    common = collections.Counter(names).most_common(1)[0][0]
    return GPU(name=common, mem=_whole_mebibytes(min(mems, default=None)), count=len(names))


def _whole_mebibytes(n: int | None) -> str:
    """Rounded down to a whole MiB (never more than there is), in the largest exact unit."""
    if n is None or n <= 0:
        return ""
    return format_bytes(max(_MI, n - n % _MI))


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _meminfo_total(root: Path) -> int | None:
    for line in (_read(root / "proc/meminfo") or "").splitlines():
        key, _, value = line.partition(":")
        if key == "MemTotal":
            with contextlib.suppress(ValueError, IndexError):
                return int(value.split()[0]) * 1024  # in kB
    return None


def _cpu_model(root: Path) -> str:
    for line in (_read(root / "proc/cpuinfo") or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model"):
            return value.strip()
    return ""


# -- cgroups -------------------------------------------------------------------------------
# /proc/self/cgroup names this process's group in each hierarchy; /proc/self/mountinfo says
# where each hierarchy is mounted. A limit set on a parent group applies too, so the groups
# from ours up to the mount are all read and the smallest limit wins.


@dataclass(frozen=True, slots=True)
class _Mount:
    root: str  # the group of the hierarchy that is mounted
    point: str  # where
    version: int  # 1 or 2
    controllers: frozenset[str]


def _mounts(root: Path) -> list[_Mount]:
    found = []
    for line in (_read(root / "proc/self/mountinfo") or "").splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        fstype, options = tail[0], tail[2]
        if fstype == "cgroup2":
            found.append(_Mount(fields[3], fields[4], 2, frozenset()))
        elif fstype == "cgroup":
            found.append(_Mount(fields[3], fields[4], 1, frozenset(options.split(","))))
    return found


def _groups(root: Path) -> Iterator[tuple[int, frozenset[str], str]]:
    """(version, controllers, group path) for each line of /proc/self/cgroup."""
    for line in (_read(root / "proc/self/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and not controllers:
            yield 2, frozenset(), path
        else:
            yield 1, frozenset(controllers.split(",")), path


def _group_dirs(root: Path, version: int, controller: str) -> list[Path]:
    """Our group's directory and its parents up to the mount, innermost first."""
    for v, controllers, path in _groups(root):
        if v != version or (version == 1 and controller not in controllers):
            continue
        for mount in _mounts(root):
            if mount.version != version or (version == 1 and controller not in mount.controllers):
                continue
            top = root / mount.point.lstrip("/")
            # Inside a cgroup namespace the mount's root is our group itself, or unrelated to
            # the path we see: then the mount point is the group.
            rel = path[len(mount.root) :] if path.startswith(mount.root) else ""
            leaf = top / rel.strip("/")
            if not leaf.is_dir():
                leaf = top
            dirs = [leaf]
            while dirs[-1] != top and top in dirs[-1].parents:
                dirs.append(dirs[-1].parent)
            return dirs
    return []


def _smallest(values: Iterable[int | None]) -> int | None:
    return min((v for v in values if v is not None), default=None)


def _cgroup_cpu_quota_millis(root: Path) -> int | None:
    def v2(d: Path) -> int | None:
        quota, _, period = (_read(d / "cpu.max") or "max").strip().partition(" ")
        return _millis(quota, period)

    def v1(d: Path) -> int | None:
        quota = (_read(d / "cpu.cfs_quota_us") or "-1").strip()
        period = (_read(d / "cpu.cfs_period_us") or "").strip()
        return _millis(quota, period)

    return _smallest(
        itertools.chain(
            (v2(d) for d in _group_dirs(root, 2, "cpu")),
            (v1(d) for d in _group_dirs(root, 1, "cpu")),
        )
    )


def _millis(quota: str, period: str) -> int | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None  # "max", or not set
    return q * 1000 // p if q > 0 and p > 0 else None


def _cgroup_memory_limit(root: Path) -> int | None:
    def read_int(path: Path) -> int | None:
        text = (_read(path) or "").strip()
        return int(text) if text.isdigit() else None  # "max" or absent: no limit

    total = _smallest(
        itertools.chain(
            (read_int(d / "memory.max") for d in _group_dirs(root, 2, "memory")),
            (read_int(d / "memory.limit_in_bytes") for d in _group_dirs(root, 1, "memory")),
        )
    )
    # cgroup v1 writes "no limit" as a huge number (2^63 rounded down to a page).
    return total if total is not None and total < 2**62 else None
