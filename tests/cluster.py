"""A real multi-node Ray cluster on this machine, for tests: a head and N worker nodes started with `ray start`.

Every node runs on loopback (127.0.0.2), in its own process group and its own short temp dir, with token
authentication off (RAY_AUTH_MODE=disabled) in the environment of these processes only. Leaving the context kills
exactly the process groups it started (never `ray stop`, which would take down every Ray on the machine, the test
session's own local Ray included) and removes the temp dirs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NODE_IP = "127.0.0.2"
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((NODE_IP, 0))
        return s.getsockname()[1]


def isolated(cmd: list[str], hide: tuple[Path, ...], readonly: tuple[Path, ...]) -> list[str]:
    """`cmd` in a private mount namespace where `hide` are empty tmpfs directories and `readonly` read-only."""
    mounts = [f"mount -t tmpfs tmpfs {shlex.quote(str(p))}" for p in hide]
    for p in readonly:
        q = shlex.quote(str(p))
        mounts.append(f"mount --bind {q} {q} && mount -o remount,bind,ro {q}")
    script = " && ".join([*mounts, "exec " + shlex.join(cmd)])
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]


def can_isolate_mounts() -> bool:
    """Whether this process may create mount namespaces and mount in them (root, or a permissive container)."""
    if not shutil.which("unshare"):
        return False
    with tempfile.TemporaryDirectory() as d:
        probe = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", f"mount -t tmpfs tmpfs {shlex.quote(d)}"],
            capture_output=True,
        )
    return probe.returncode == 0


def session_pids(session: int) -> list[int]:
    """Every live process in session `session` (Linux /proc)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:
            pids.append(int(stat.parent.name))
    return pids


class LocalCluster:
    def __init__(
        self,
        num_workers: int = 1,
        cpus_per_node: int = 1,
        object_store_mb: int = 200,
        timeout_s: float = 90,
        worker_gpus: int = 0,
        worker_hide: tuple[Path, ...] = (),
        worker_readonly: tuple[Path, ...] = (),
        head_cpus: int | None = None,
        auth_token: str | None = None,
    ) -> None:
        """`worker_gpus`: a GPU resource each worker node advertises (none needs to exist). `worker_hide` /
        `worker_readonly`: paths the worker nodes see as an empty directory / read-only, in a private mount
        namespace (root only, see `can_isolate_mounts`): how a second machine without the project, or without the
        shared run directory, looks."""
        self.num_workers, self.cpus_per_node = num_workers, cpus_per_node
        self.head_cpus = cpus_per_node if head_cpus is None else head_cpus  # 0: the head only coordinates
        self.worker_gpus, self.worker_hide, self.worker_readonly = worker_gpus, worker_hide, worker_readonly
        self.object_store_mb, self.timeout_s = object_store_mb, timeout_s
        self.port = free_port()
        self.address = f"{NODE_IP}:{self.port}"
        # What a driver process joining this cluster needs (the driver picks 127.0.0.2 itself from the address).
        # Token authentication off, unless the test is about it (`auth_token`: the cluster's token).
        auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": auth_token} if auth_token else {"RAY_AUTH_MODE": "disabled"}
        self.env = {**os.environ, **auth, "RAY_DEDUP_LOGS": "0"}
        self.env.pop("RAY_ADDRESS", None)
        self.procs: list[subprocess.Popen] = []
        self.temp_dirs: list[Path] = []
        self.logs: list[Path] = []

    @property
    def num_nodes(self) -> int:
        return 1 + self.num_workers

    def _start_node(self, *role: str) -> None:
        temp_dir = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # short: socket paths must fit 107 bytes
        self.temp_dirs.append(temp_dir)
        log = temp_dir.with_suffix(".log")
        self.logs.append(log)
        cmd = [
            RAY,
            "start",
            "--block",
            *role,
            f"--node-ip-address={NODE_IP}",
            f"--temp-dir={temp_dir}",
            f"--num-cpus={self.head_cpus if role[0] == '--head' else self.cpus_per_node}",
            f"--object-store-memory={self.object_store_mb * 1024**2}",
            "--disable-usage-stats",
        ]
        if role[0] != "--head":
            cmd.append(f"--num-gpus={self.worker_gpus}")
            if self.worker_hide or self.worker_readonly:
                cmd = isolated(cmd, self.worker_hide, self.worker_readonly)
        with open(log, "wb") as out:
            self.procs.append(
                subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            )

    def alive_nodes(self) -> int:
        """Nodes the head reports active (0 while it is not answering yet)."""
        try:
            out = subprocess.run(
                [RAY, "status", f"--address={self.address}"], env=self.env, capture_output=True, text=True, timeout=20
            ).stdout
        except subprocess.TimeoutExpired:
            return 0
        active = out.split("Active:", 1)[1].split("Pending:", 1)[0] if "Active:" in out else ""
        return sum(int(n) for n in re.findall(r"^\s*(\d+) node_", active, flags=re.M))

    def start(self) -> LocalCluster:
        try:
            self._start_node("--head", f"--port={self.port}", "--include-dashboard=false")
            for _ in range(self.num_workers):
                self._start_node(f"--address={self.address}")
            deadline = time.monotonic() + self.timeout_s
            while (alive := self.alive_nodes()) < self.num_nodes:
                dead = [p.args[2:4] for p in self.procs if p.poll() is not None]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"Ray cluster at {self.address}: {alive}/{self.num_nodes} nodes alive"
                        f"{f', exited: {dead}' if dead else ''}\n{self.log_tail()}"
                    )
                time.sleep(1)
        except BaseException:
            self.stop()
            raise
        return self

    def workers_started(self, node: int) -> int:
        """Python workers node `node` (0 = head) has started so far: a node that ran tasks has some."""
        return len(list(self.temp_dirs[node].glob("session_*/logs/python-core-worker-*.log")))

    def node_of(self, pid: int) -> int | None:
        """The node (index into the started nodes) that process `pid` belongs to, or None. Ray puts each worker in
        a process group of its own, but they all stay in the session of their node's `ray start`."""
        try:
            session = os.getsid(pid)
        except ProcessLookupError:
            return None
        return next((i for i, proc in enumerate(self.procs) if proc.pid == session), None)

    def kill_node(self, node: int) -> None:
        """SIGKILL every process of node `node` (1.. are the worker nodes) at once: a machine lost mid-run."""
        proc = self.procs[node]
        for pid in session_pids(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()

    def log_tail(self, chars: int = 2000) -> str:
        return "\n".join(f"--- {log}\n{log.read_text(errors='replace')[-chars:]}" for log in self.logs if log.exists())

    def stop(self) -> None:
        # Workers first, then the head; each node's processes are in the session of its `ray start --block`.
        for proc in reversed(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + 10
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            for pid in session_pids(proc.pid):  # what is left of the node after the grace period (workers too)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()
        self.procs.clear()
        for path in self.temp_dirs + self.logs:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        self.temp_dirs.clear()
        self.logs.clear()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
