"""Real platforms for the executors that hand work to one: podman (and, where installed, Slurm).

Each is skipped, with the reason, on a machine without it; `.ci/run` installs them.

Slurm: a single-node cluster (munge, slurmctld, slurmd) started once per session from a
slurm.conf in a temporary directory, on free ports, and stopped by PID at the end (munge only if
this session started it). Not as root (slurmd runs jobs as their users), its tests are skipped
too."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..images import containers_conf, local_image, podman_missing
from ..procs import free_port


@pytest.fixture(scope="session")
def podman_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local image in real podman, with the tests' containers.conf in force."""
    missing = podman_missing()
    if missing:
        pytest.skip(missing)
    home = tmp_path_factory.mktemp("podman")
    before = os.environ.get("CONTAINERS_CONF")
    os.environ["CONTAINERS_CONF"] = str(containers_conf(home))
    try:
        yield local_image(home)
    finally:
        if before is None:
            os.environ.pop("CONTAINERS_CONF", None)
        else:
            os.environ["CONTAINERS_CONF"] = before


# -- Slurm ------------------------------------------------------------------------------------

_PROGRAMS = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel")
_SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
# A cold start takes about a second; a loaded machine, more.
_START_S = 30.0


@dataclass(frozen=True)
class SlurmCluster:
    conf: Path
    logs: Path

    @property
    def jobcomp(self) -> Path:
        """One line per finished job (JobName=, JobState=, ExitCode=), kept for good."""
        return self.logs / "jobcomp.txt"

    def jobs_named(self, name: str) -> list[str]:
        """The jobs of ``name`` that Slurm knows (running, or ended within MinJobAge), by id."""
        done = subprocess.run(
            ["squeue", "-h", "-t", "all", "-n", name, "-o", "%i"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        return done.stdout.split()

    def states(self, job_ids: list[str]) -> dict[str, str]:
        done = subprocess.run(
            ["squeue", "-h", "-t", "all", "-o", "%i %T"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        pairs = (line.split() for line in done.stdout.splitlines())
        return {i: s for i, s in pairs if i in job_ids}


def _which(program: str) -> str | None:
    return shutil.which(program) or next(
        (f"{d}/{program}" for d in _SBIN if os.access(f"{d}/{program}", os.X_OK)), None
    )


def _munge_works() -> bool:
    try:
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=5)
        if cred.returncode != 0:
            return False
        check = subprocess.run(["unmunge"], input=cred.stdout, capture_output=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return check.returncode == 0


def _wait_for(check: object, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + _START_S
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            said = "\n".join(p.read_text(errors="replace")[-2000:] for p in logs if p.exists())
            pytest.fail(f"{what} within {_START_S} s; the logs said:\n{said}")
        time.sleep(0.1)  # sleep-ok: polling a daemon's start, bounded


def _idle() -> bool:
    done = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True)
    return done.returncode == 0 and done.stdout.split() == ["idle"]


def _cancel_all(logs: list[Path]) -> None:
    """No job left behind: a job's processes outlive slurmd, so cancel them all first."""
    subprocess.run(["scancel", "--full", "--quiet", "--user", "root"], capture_output=True)
    _wait_for(
        lambda: (
            not subprocess.run(
                ["squeue", "-h", "-o", "%i"], capture_output=True, text=True
            ).stdout.strip()
        ),
        "jobs were still running after scancel",
        logs,
    )


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


_CONF = """\
ClusterName=colonies-test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
StateSaveLocation={home}/state
SlurmdSpoolDir={home}/spool
SlurmctldPidFile={home}/slurmctld.pid
SlurmdPidFile={home}/slurmd.pid
SlurmctldLogFile={home}/log/slurmctld.log
SlurmdLogFile={home}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={home}/log/jobcomp.txt
ReturnToService=2
MinJobAge=300
KillWait=5
SlurmdParameters=config_overrides
DefMemPerCPU=100
SchedulerParameters=sched_interval=1
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    missing = [p for p in _PROGRAMS if _which(p) is None]
    if missing:
        pytest.skip(
            f"Slurm is not installed ({', '.join(missing)} not found): "
            "apt-get install slurm-wlm munge (.ci/install-platforms does)"
        )
    if os.geteuid() != 0:
        pytest.skip("a test Slurm cluster needs root (slurmd runs each job as its user)")
    home = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "log"):
        (home / sub).mkdir()
    conf = home / "slurm.conf"
    # More CPUs than the machine has (config_overrides lets slurmd offer them), so that several
    # one-CPU jobs run at once; DefMemPerCPU, so that a job asking no memory does not take all.
    conf.write_text(
        _CONF.format(
            home=home,
            ctld_port=free_port(),
            slurmd_port=free_port(),
            cpus=max(8, os.cpu_count() or 1),
        )
    )
    started: list[subprocess.Popen[bytes]] = []
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SLURM_CONF", str(conf))
        try:
            if not _munge_works():
                subprocess.run(
                    ["install", "-d", "-o", "munge", "-g", "munge", "-m", "0755", "/run/munge"],
                    check=True,
                )
                munged = home / "log" / "munged.log"
                argv = ["runuser", "-u", "munge", "--", str(_which("munged")), "-F"]
                started.append(_spawn(argv, munged))
                _wait_for(_munge_works, "munged did not answer", [munged])
            outs = [home / "log" / "ctld.out", home / "log" / "slurmd.out"]
            daemons = [
                [str(_which("slurmctld")), "-D", "-i", "-f", str(conf)],
                [str(_which("slurmd")), "-D", "-N", "localhost", "-f", str(conf)],
            ]
            for argv, out in zip(daemons, outs, strict=True):
                started.append(_spawn(argv, out))
            logs = [*outs, home / "log" / "slurmctld.log", home / "log" / "slurmd.log"]
            _wait_for(_idle, "the Slurm node was not idle", logs)
            yield SlurmCluster(conf=conf, logs=home / "log")
            _cancel_all(logs)
        finally:
            for proc in reversed(started):
                _stop(proc)
