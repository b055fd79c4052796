"""A real one-node Slurm cluster under a temporary directory, for tests.

Debian's Slurm 22.05 (`apt-get install slurmctld slurmd slurm-client munge`) runs here as a
one-node cluster: this module writes a private `slurm.conf` (all state, logs and pid files
under one directory, free ports), starts `slurmctld` and `slurmd` (and `munged` for
`auth="munge"`), waits for the node to be idle, and hands out an environment whose
`SLURM_CONF` points at the private config. At the end it cancels what is left, waits for
the jobs to go, and stops exactly the daemons it started, by the pid each one wrote (after
checking `/proc/PID/comm`), never by name.

Usage (the daemons need root, as they do on a real cluster)::

    with slurm_cluster(tmp_path / "slurm") as cluster:
        subprocess.run(["sbatch", "--wait", "job.sh"], env=cluster.env, timeout=120)

`two_node_cluster(root)` starts two nodes, node1 and node2, each a slurmd in its own network,
UTS and mount namespace on this machine (see TwoNodeCluster), for `sbatch --nodes=2`.

Missing binaries or no root: `require_slurm()` skips the calling test with the reason, or
fails it when the environment sets `SCCL_REQUIRE_SLURM=1` (CI does, so that a broken
install cannot pass as a skip).
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BINARIES = ("slurmctld", "slurmd", "slurmstepd", "sbatch", "srun", "scontrol", "sinfo", "squeue",
            "scancel")
# Finished jobs vanish this many seconds after they end; <= 4 also makes `sbatch --wait`
# poll every 2 s instead of backing off to 32 s (sbatch scales its sleep with MinJobAge).
MIN_JOB_AGE = 4
# Seconds a requeued job waits before it may start again (slurm.conf AuthInfo cred_expire).
REQUEUE_DELAY = 5


def _which(name: str) -> str | None:
    # The daemons live in /usr/sbin, often not on a non-login PATH.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def missing_reason(auth: str = "none", extra: tuple[str, ...] = ()) -> str | None:
    """Why a cluster cannot start here (missing binaries, not root), or None."""
    names = BINARIES + (("munged", "mungekey") if auth == "munge" else ())
    missing = [n for n in names if _which(n) is None]
    if missing:
        return ("Slurm not installed (missing: " + ", ".join(missing) + "); "
                "apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge")
    missing = [n for n in extra if _which(n) is None]
    if missing:
        return "missing: " + ", ".join(missing) + " (apt-get install iproute2 util-linux mount)"
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs; run the Slurm tests as root"
    return None


def require_slurm(auth: str = "none", extra: tuple[str, ...] = ()) -> None:
    """Skip (or fail, with SCCL_REQUIRE_SLURM=1) the calling test if no cluster can start."""
    reason = missing_reason(auth, extra)
    if reason is not None:
        unavailable(reason)


def unavailable(reason: str) -> None:
    """Skip the calling test, or fail it when SCCL_REQUIRE_SLURM=1."""
    if os.environ.get("SCCL_REQUIRE_SLURM", "") not in ("", "0"):
        pytest.fail(f"SCCL_REQUIRE_SLURM is set but {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _real_memory_mb() -> int:
    """RealMemory as slurmd measures it (a larger value would make the node invalid)."""
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True,
                         check=True).stdout
    for token in out.split():
        if token.startswith("RealMemory="):
            return int(token.split("=", 1)[1])
    raise RuntimeError(f"slurmd -C printed no RealMemory: {out!r}")


class SlurmCluster:
    """One slurmctld + one slurmd (+ munged) with all state under `root`."""

    def __init__(self, root: str | os.PathLike, *, auth: str = "none", cpus: int | None = None,
                 gpus: int = 0):
        if auth not in ("none", "munge"):
            raise ValueError(f"auth must be 'none' or 'munge', got {auth!r}")
        self.root = Path(root).resolve()
        self.auth = auth
        self.cpus = cpus or os.cpu_count() or 1
        self.gpus = gpus  # fake GPUs (character devices); 0 if they cannot be made
        self.node = socket.gethostname().split(".")[0]
        self.nodes = [self.node]
        self.ctl_addr = "127.0.0.1"  # where slurmctld listens for clients and nodes
        # slurmd's spool dir, pid file and log file under root (%n: the node's name)
        self.node_files = ("spool", "slurmd.pid", "slurmd.log")
        self.conf = self.root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self._pidfiles: dict[str, Path] = {}

    # ---------------------------------------------------------------- configuration
    def _auth_lines(self) -> list[str]:
        # cred_expire also delays a requeued job's restart (default 120 s): keep tests quick.
        expire = f"cred_expire={REQUEUE_DELAY}"
        if self.auth == "none":
            # No uid verification: fine in a throw-away sandbox, never on a real cluster.
            return ["AuthType=auth/none", "CredType=cred/none", f"AuthInfo={expire}"]
        sock = self.root / "munge" / "munge.socket.2"
        return ["AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={sock},{expire}"]

    def _fake_gpus(self) -> list[str]:
        """gres lines for `self.gpus` fake GPUs: /dev/null-like character devices that slurmd
        accepts, so `--gpus-per-node=N` jobs run with CUDA_VISIBLE_DEVICES set."""
        if not self.gpus:
            return []
        dev = self.root / "dev"
        dev.mkdir(exist_ok=True)
        try:
            for i in range(self.gpus):
                if not (dev / f"gpu{i}").exists():
                    os.mknod(dev / f"gpu{i}", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except OSError:  # no CAP_MKNOD here: a cluster without GPUs
            self.gpus = 0
            return []
        (self.root / "gres.conf").write_text(f"Name=gpu File={dev}/gpu[0-{self.gpus - 1}]\n")
        return ["GresTypes=gpu"]

    def write_config(self) -> None:
        r = self.root
        for sub in ("state", "spool", "log"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        lines = [
            *self._fake_gpus(),
            "ClusterName=sccltest",
            f"SlurmctldHost={self.node}({self.ctl_addr})",
            f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
            "SlurmUser=root", "SlurmdUser=root",
            *self._auth_lines(),
            # No cgroups in containers: track processes by parent pid, no task binding.
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/backfill", "SchedulerParameters=sched_interval=2",
            "MpiDefault=none", "SwitchType=switch/none",
            "ReturnToService=2", "EnforcePartLimits=ALL",
            "DependencyParameters=kill_invalid_depend", "MailProg=/bin/true",
            f"MinJobAge={MIN_JOB_AGE}", "KillWait=10", "MaxArraySize=1001",
            f"StateSaveLocation={r / 'state'}", f"SlurmdSpoolDir={r / self.node_files[0]}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / self.node_files[1]}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / self.node_files[2]}",
            "SlurmctldDebug=info", "SlurmdDebug=info",
            *self._node_lines(),
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _node_lines(self) -> list[str]:
        """slurm.conf's NodeName and PartitionName lines."""
        node_gres = f" Gres=gpu:{self.gpus}" if self.gpus else ""
        return [f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} "
                f"RealMemory={_real_memory_mb()}{node_gres} State=UNKNOWN",
                f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP"]

    # ---------------------------------------------------------------- daemons
    def _start_munge(self) -> None:
        d = self.root / "munge"
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)  # munged refuses a socket dir others cannot traverse
        shutil.chown(d, "munge", "munge")
        key = d / "munge.key"
        as_munge = ["runuser", "-u", "munge", "--"]
        subprocess.run([*as_munge, _which("mungekey"), "--create", f"--keyfile={key}"],
                       check=True, capture_output=True)
        subprocess.run([*as_munge, _which("munged"), f"--key-file={key}",
                        f"--socket={d / 'munge.socket.2'}", f"--pid-file={d / 'munged.pid'}",
                        f"--log-file={d / 'munged.log'}", f"--seed-file={d / 'munged.seed'}"],
                       check=True, capture_output=True)
        self._pidfiles["munged"] = d / "munged.pid"

    def start(self, timeout: float = 60.0) -> None:
        self.write_config()
        if self.auth == "munge":
            self._start_munge()
        # -i: ignore state from an earlier run of the same directory.
        self._run_daemon("slurmctld", [_which("slurmctld"), "-i", "-f", str(self.conf)],
                         self.root / "slurmctld.pid")
        self._start_nodes()
        self.wait_idle(timeout)

    def _start_nodes(self) -> None:
        self._run_daemon("slurmd", [_which("slurmd"), "-f", str(self.conf), "-N", self.node],
                         self.root / "slurmd.pid")

    def _run_daemon(self, name: str, cmd: list[str], pidfile: Path) -> None:
        self._pidfiles[name] = pidfile
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed to start ({proc.returncode}): {proc.stderr}"
                               f"\n{self.log_tail(name)}")

    def wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        states: list[str] = []
        while time.monotonic() < deadline:
            out = self.run(["sinfo", "-h", "-N", "-o", "%T"], check=False)
            states = out.stdout.split()
            if states == ["idle"] * len(self.nodes):
                return
            if self.nodes_down():
                break
            time.sleep(0.5)
        logs = "\n".join(self.log_tail(n) for n in ("slurmctld", *self.slurmd_logs()))
        raise RuntimeError(f"nodes not idle (states {states}, timeout {timeout:.0f} s)\n{logs}")

    def slurmd_logs(self) -> list[str]:
        """log_tail names of the slurmd logs."""
        return ["slurmd"]

    def nodes_down(self) -> bool:
        """A slurmd we started has exited (no point waiting for its node)."""
        return False

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.root / "log" / f"{name}.log"
        if not path.exists():
            return f"({path} missing)"
        return f"--- {path}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel all jobs, wait for them to end, then stop our daemons by pid."""
        if "slurmctld" in self._pidfiles and self._pid("slurmctld"):
            self.run(["scancel", "--full", "--user", "root"], check=False)
            self.run(["scancel", "--user", "root"], check=False)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.queue():
                time.sleep(0.5)
        self._stop_nodes(timeout)
        for name in ("slurmctld", "munged"):
            pid = self._pid(name)
            if pid:
                _terminate(pid, timeout)

    def _stop_nodes(self, timeout: float) -> None:
        pid = self._pid("slurmd")
        if pid:
            _terminate(pid, timeout)

    def _pid(self, name: str) -> int | None:
        """The pid `name` wrote, if that process is still ours (its comm matches)."""
        pidfile = self._pidfiles.get(name)
        if pidfile is None or not pidfile.exists():
            return None
        try:
            pid = int(pidfile.read_text().split()[0])
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except (ValueError, IndexError, OSError):
            return None
        return pid if comm.startswith(name[:15]) else None

    # ---------------------------------------------------------------- client helpers
    def run(self, cmd: list[str], *, check: bool = True, timeout: float = 60.0,
            **kw) -> subprocess.CompletedProcess:
        """Run a client command (sbatch, scontrol, ...) against this cluster."""
        kw.setdefault("env", self.env)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{cmd} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def queue(self) -> list[str]:
        """Lines `jobid state` for every job slurmctld still knows."""
        out = self.run(["squeue", "-h", "-o", "%i %T"], check=False).stdout
        return [line for line in out.splitlines() if line.strip()]


def _terminate(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.2)
    if Path(f"/proc/{pid}").exists():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------- two nodes on one machine

def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([_which("ip"), *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} -> {proc.returncode}: {proc.stderr.strip()}")
    return proc


def _free_subnet(prefix: str = "10.213") -> str:
    """`prefix.X` for an X that no address or route of this machine uses yet."""
    used = _ip("-4", "-o", "addr").stdout + _ip("-4", "route").stdout
    for x in random.sample(range(1, 255), 254):
        if f"{prefix}.{x}." not in used:
            return f"{prefix}.{x}"
    raise RuntimeError(f"no free /24 under {prefix}.0.0/16")


class NodeNetwork:
    """n network namespaces, each with one end of a veth pair whose other end is on a bridge
    in the root namespace. The bridge holds NET.1 (slurmctld), node i holds NET.(10+i), all
    in NET.0/24; no default route, so a node reaches only the bridge address, the other nodes
    and its own loopback. Names carry a random tag so concurrent runs do not collide."""

    def __init__(self, n: int):
        tag = secrets.token_hex(2)
        self.namespaces = [f"sccl-{tag}-node{i}" for i in range(1, n + 1)]
        self.gateway = ""  # the bridge's address and the nodes': set by create()
        self.addrs: list[str] = []
        self._tag = tag
        self._bridge = f"sccl{tag}br"  # interface names: at most 15 characters
        self._links: list[str] = []  # root-namespace links made so far, to remove
        self.up = False

    def create(self) -> None:
        self.up = True  # from the first command on: remove() cleans up a partial network
        net = _free_subnet()
        self.gateway = f"{net}.1"
        self.addrs = [f"{net}.{10 + i}" for i in range(1, len(self.namespaces) + 1)]
        self._links.append(self._bridge)
        _ip("link", "add", self._bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self._bridge)
        _ip("link", "set", self._bridge, "up")
        for i, (ns, addr) in enumerate(zip(self.namespaces, self.addrs, strict=True), 1):
            outer, inner = f"sccl{self._tag}v{i}", f"sccl{self._tag}n{i}"
            _ip("netns", "add", ns)
            self._links.append(outer)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", outer, "master", self._bridge, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")

    def kill_leftovers(self) -> None:
        """SIGKILL whatever still runs in our namespaces (stray job steps), by pid."""
        for ns in self.namespaces:
            for pid in _ip("netns", "pids", ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)

    def remove(self) -> None:
        """Delete the namespaces (their veth ends go with them) and our root-side links."""
        for ns in self.namespaces:
            _ip("netns", "del", ns, check=False)
        for link in reversed(self._links):
            _ip("link", "del", link, check=False)


class TwoNodeCluster(SlurmCluster):
    """slurmctld (+ munged) in the root namespace on the bridge address, and one `slurmd -D`
    per node inside its own network, UTS and mount namespace: hostname nodeN, address
    NodeAddr, and an /etc/hosts (bind-mounted in that mount namespace only) that resolves
    the node names to their addresses, as a cluster's DNS would; the machine's own hostname
    and /etc/hosts stay as they are. (Debian's 22.05 also runs two `slurmd -N` on one host
    with a Port= per node, but both would share a hostname and 127.0.0.1: the head address
    taken from the allocation and gloo's own address lookup would never leave loopback.)"""

    def __init__(self, root: str | os.PathLike, *, auth: str = "none", cpus: int | None = None,
                 nodes: int = 2):
        super().__init__(root, auth=auth, cpus=cpus)
        self.network = NodeNetwork(nodes)
        self.nodes = [f"node{i}" for i in range(1, nodes + 1)]
        self.node_files = ("spool/%n", "slurmd-%n.pid", "slurmd-%n.log")
        self._procs: dict[str, subprocess.Popen] = {}

    def _node_lines(self) -> list[str]:
        names = f"node[1-{len(self.nodes)}]"
        return [f"NodeName={names} NodeAddr={','.join(self.network.addrs)} CPUs={self.cpus} "
                f"RealMemory={_real_memory_mb()} State=UNKNOWN",
                f"PartitionName=debug Nodes={names} Default=YES MaxTime=INFINITE State=UP"]

    def slurmd_logs(self) -> list[str]:
        return [f"slurmd-{node}" for node in self.nodes]

    def nodes_down(self) -> bool:
        return any(proc.poll() is not None for proc in self._procs.values())

    def start(self, timeout: float = 60.0) -> None:
        if not self.network.up:
            self.network.create()
        self.ctl_addr = self.network.gateway
        super().start(timeout)

    def _start_nodes(self) -> None:
        hosts = self.root / "hosts"
        hosts.write_text("".join(f"{addr} {name}\n" for addr, name in (
            ("127.0.0.1", "localhost"), (self.ctl_addr, self.node),
            *zip(self.network.addrs, self.nodes, strict=True))))
        # nsenter -> unshare -> sh -> exec slurmd: the Popen pid ends up being slurmd's.
        # Not `ip netns exec`: it remounts /sys, hiding the cgroup mounts slurmd checks.
        inner = 'hostname "$1" && mount --bind "$2" /etc/hosts && shift 2 && exec "$@"'
        for node, ns in zip(self.nodes, self.network.namespaces, strict=True):
            (self.root / "spool" / node).mkdir(parents=True, exist_ok=True)
            with open(self.root / "log" / f"slurmd-{node}.out", "ab") as out:
                self._procs[node] = subprocess.Popen(
                    [_which("nsenter"), f"--net=/run/netns/{ns}", _which("unshare"), "--uts",
                     "--mount",
                     "sh", "-c", inner, "sh", node, str(hosts),
                     _which("slurmd"), "-D", "-f", str(self.conf), "-N", node],
                    env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def _stop_nodes(self, timeout: float) -> None:
        # Our children: wait() reaps them (polling /proc would wait on the zombie).
        for proc in self._procs.values():
            if proc.poll() is None:
                # slurmd, or still the wrapper that never reached exec: ours all the same
                proc.terminate()
        for proc in self._procs.values():
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self, timeout: float = 30.0) -> None:
        try:
            super().stop(timeout)
        finally:
            self.network.kill_leftovers()
            self.network.remove()


@contextlib.contextmanager
def two_node_cluster(root: str | os.PathLike, *, auth: str | None = None,
                     cpus: int | None = None) -> Iterator[TwoNodeCluster]:
    """Like slurm_cluster, with two nodes (node1, node2) in network namespaces; needs `ip`,
    `nsenter`, `unshare` and `mount` besides Slurm."""
    auth = auth or os.environ.get("SCCL_SLURM_AUTH", "none")
    require_slurm(auth, extra=("ip", "nsenter", "unshare", "mount"))
    cluster = TwoNodeCluster(root, auth=auth, cpus=cpus)
    try:
        try:
            cluster.network.create()
        except RuntimeError as err:  # e.g. a container without CAP_NET_ADMIN
            unavailable(f"cannot create network namespaces here: {err}")
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@contextlib.contextmanager
def slurm_cluster(root: str | os.PathLike, *, auth: str | None = None,
                  cpus: int | None = None, gpus: int = 0) -> Iterator[SlurmCluster]:
    """Start a cluster under `root`, yield it, always stop it (skips if Slurm is missing).
    `auth` defaults to $SCCL_SLURM_AUTH or "none"; `gpus` fake GPUs on the node."""
    auth = auth or os.environ.get("SCCL_SLURM_AUTH", "none")
    require_slurm(auth)
    cluster = SlurmCluster(root, auth=auth, cpus=cpus, gpus=gpus)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
