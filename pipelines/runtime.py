"""Process setup done once by the entry point: logging, and Ray (local by default, or an existing cluster)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sys
import tempfile
from collections.abc import Iterator

from pipelines.config import RuntimeConfig

logger = logging.getLogger(__name__)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("ray", "ray.data", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class ClusterUnreachable(Exception):
    """The Ray address given cannot be reached or joined (no token); reported in one line with exit status 2."""


def resolve_address(cfg: RuntimeConfig, address: str | None) -> str | None:
    """The Ray address to join: --ray-address, then runtime.ray_address, then RAY_ADDRESS; None = local Ray."""
    return address or cfg.ray_address or os.environ.get("RAY_ADDRESS") or None


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of "host:port" or "ray://host:port"; None for "auto" and anything else Ray resolves itself."""
    m = re.fullmatch(r"(?:ray://)?\[?([^\[\]/]+?)\]?:(\d+)/?", address.strip())
    return (m.group(1), int(m.group(2))) if m else None


def node_ip_for(address: str) -> str | None:
    """A driver joining a cluster on a loopback address must register on loopback too (Ray would otherwise
    announce the machine's network address, which the loopback cluster cannot reach back)."""
    hp = _host_port(address)
    if hp and (hp[0].startswith("127.") or hp[0] == "localhost"):
        return "127.0.0.1" if hp[0] == "localhost" else hp[0]
    return None


def check_ray_address(address: str, timeout_s: float = 3.0) -> None:
    """Fail fast on an address nothing listens on: `ray.init` to a dead address retries for a long time."""
    hp = _host_port(address)
    if hp is None:
        return
    try:
        with socket.create_connection(hp, timeout=timeout_s):
            pass
    except OSError as e:
        raise ClusterUnreachable(
            f"--ray-address {address}: no Ray cluster reachable at {hp[0]}:{hp[1]} ({e.strerror or e})"
        ) from e


JOIN_TIMEOUT_S = 10


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Capture file descriptor 2 (what native code writes too); the text is in the yielded list afterwards."""
    sys.stderr.flush()
    saved = os.dup(2)
    out: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))


def join_failure(error: str, ray_log: str) -> str:
    """One line on why joining a reachable cluster failed, from the error and what Ray's core logged meanwhile."""
    if "InvalidAuthToken" in ray_log or "Unauthenticated" in ray_log or "uthentication" in error:
        return (
            "the cluster refused this driver's authentication token (missing or wrong): give it the cluster's token "
            "in ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN (see `ray get-auth-token` on the head)"
        )
    detail = error.strip().splitlines()[0] if error.strip() else "no answer"
    return f"cannot join the Ray cluster ({detail}); is it a Ray head of the same Ray version ({_ray_version()})?"


def _ray_version() -> str:
    import ray

    return ray.__version__


def init_ray(cfg: RuntimeConfig, address: str | None) -> dict:
    """Connect to `address` (or RAY_ADDRESS) when given; otherwise start a local Ray with this machine's CPUs.
    Returns what the run used ({"address", "nodes", "cpus"}), recorded in _run.json."""
    import ray

    quiet_deliberate_notices()
    if ray.is_initialized():
        configure_data(cfg)
        return cluster_info(resolve_address(cfg, address) or "local")
    address = resolve_address(cfg, address)
    if address:
        check_ray_address(address)
        logger.info("connecting to Ray cluster at %s", address)
        # Client mode (ray://) runs no local node, so there is no node address to choose.
        ip = None if address.startswith("ray://") else (cfg.node_ip or node_ip_for(address))
        # Ray's core retries a refused connection for a long time, logging a line per second straight to fd 2:
        # wait less, and keep those lines to explain the failure in one line (shown as they were on success).
        os.environ.setdefault("RAY_py_gcs_connect_timeout_s", str(JOIN_TIMEOUT_S))
        with captured_stderr() as log:
            try:
                ray.init(
                    address=address,
                    logging_level=logging.WARNING,
                    log_to_driver=False,
                    **({"_node_ip_address": ip} if ip else {}),
                )
            except (ConnectionError, TimeoutError, ray.exceptions.AuthenticationError) as e:
                failure: Exception | None = e
            else:
                failure = None
        if failure is not None:
            raise ClusterUnreachable(f"--ray-address {address}: {join_failure(str(failure), log[0])}") from failure
        sys.stderr.write(log[0])
        info = cluster_info(address)
        logger.info("joined Ray cluster at %s: %d nodes, %g CPUs", address, info["nodes"], info["cpus"])
    else:
        kwargs: dict = {"num_cpus": cfg.num_cpus or os.cpu_count() or 1, "include_dashboard": False}
        if cfg.object_store_mb:
            kwargs["object_store_memory"] = cfg.object_store_mb * 1024**2
        # A local run stays on loopback: no ports exposed to the network, no firewall prompts.
        ip = cfg.node_ip or "127.0.0.1"
        # Ray 2.60 turns token authentication on for a new local cluster (RAY_AUTH_MODE unset) and warns that it did;
        # the line below says so instead (DELIBERATE_NOTICES). A RAY_AUTH_MODE the user set is kept.
        ray.init(address="local", _node_ip_address=ip, logging_level=logging.WARNING, log_to_driver=False, **kwargs)
        auth = os.environ.get("RAY_AUTH_MODE", "token")
        logger.info(
            "started local Ray on %s: %d CPUs, no dashboard, token authentication %s; Ray Data progress bars %s "
            "(the progress lines below are the project's)",
            ip,
            kwargs["num_cpus"],
            "on (~/.ray/auth_token)" if auth == "token" else f"off (RAY_AUTH_MODE={auth})",
            "on" if sys.stderr.isatty() else "off, stderr is not a terminal",
        )
        info = cluster_info("local")
    configure_data(cfg)
    return info


def configure_data(cfg: RuntimeConfig) -> None:
    """This driver's Ray Data settings (the DataContext is per process: set on every run, also when Ray was
    already initialised by the caller)."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty()
    ctx.print_on_execution_start = False
    # A worker that dies (a decoder crashing on a broken file) loses its block; the driver then records the
    # affected inputs as rejected instead of failing the run. Exceptions inside steps never get here.
    ctx.max_errored_blocks = -1
    # The driver's stall watchdog (runtime.stall_timeout_s, pipelines.orchestrate.watch) replaces Ray Data's own
    # no-progress guard (30 min in Ray 2.60), which fails the whole run with ExecutionTimeoutError instead of
    # retrying what is left; with both on, Ray's could fire first on the same stall.
    if hasattr(ctx, "execution_no_progress_timeout_s"):
        ctx.execution_no_progress_timeout_s = -1
    # Explicit limits for the streaming executor: past them it stops launching tasks (back-pressure) instead of
    # filling the object store, which is what keeps memory flat however large the corpus. None = no limit.
    ctx.execution_options.resource_limits = ray.data.ExecutionResources.for_limits(
        cpu=cfg.data_cpus or None,
        object_store_memory=cfg.data_object_store_mb * 1024**2 if cfg.data_object_store_mb else None,
    )


# What Ray logs about settings this project makes on purpose, by the logger that emits it: a pattern of the
# message, and why it is safe to drop. Every other Ray message, every real warning among them, still shows.
DELIBERATE_NOTICES: dict[str, tuple[str, str]] = {
    "ray._private.authentication.authentication_token_setup": (
        r"^Token authentication is enabled for this Ray cluster\.",
        "a new local Ray turns token authentication on by default; init_ray's own line says it is on",
    ),
    "ray.data._internal.progress": (
        r"^Progress bars disabled\.",
        "configure_data turns them off when stderr is not a terminal; the project logs its own progress lines",
    ),
    "ray.data._internal.execution.streaming_executor": (
        r"Dataset \S+ execution finished in ",
        "'Dataset ... execution finished in N seconds' after each stage: the project's progress lines and summary "
        "report each stage's time",
    ),
}


class _DropNotice(logging.Filter):
    """Drops the records of one logger whose message matches `pattern` (see DELIBERATE_NOTICES)."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(str(record.msg))


def quiet_deliberate_notices() -> None:
    """Attach the DELIBERATE_NOTICES filters (once per process) to the loggers that emit them."""
    for name, (pattern, _why) in DELIBERATE_NOTICES.items():
        target = logging.getLogger(name)
        if not any(isinstance(f, _DropNotice) for f in target.filters):
            target.addFilter(_DropNotice(pattern))


def cluster_info(address: str) -> dict:
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    resources = ray.cluster_resources()
    return {
        "address": address,
        "nodes": len(alive),
        "cpus": resources.get("CPU", 0.0),
        "gpus": resources.get("GPU", 0.0),
        "node_list": [
            {
                "node_id": n["NodeID"],
                "ip": n.get("NodeManagerAddress"),
                "cpus": n.get("Resources", {}).get("CPU", 0.0),
                "gpus": n.get("Resources", {}).get("GPU", 0.0),
            }
            for n in alive
        ],
    }


class ClusterNotReady(Exception):
    """A node of the cluster cannot do this run's work (project missing, run directory or inputs not reachable);
    reported in one line with exit status 2 before any work starts."""


PROJECT_PACKAGES = ("pipelines", "curation", "annotators")
PREFLIGHT_TIMEOUT_S = 120.0


def code_fingerprint() -> str:
    """Hash of the project's Python sources as imported here: driver and workers must run the same code."""
    import hashlib
    import importlib
    from pathlib import Path

    digest = hashlib.sha256()
    for name in PROJECT_PACKAGES:
        root = Path(importlib.import_module(name).__file__).parent
        for path in sorted(root.rglob("*.py")):
            digest.update(path.relative_to(root.parent).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def probe_node(token_path: str, token: str, inputs: list[str]) -> dict:
    """Runs on one node (a Ray task pinned to it): what this node sees of the project, the run directory and the
    inputs. Importing this function at all proves the project is installed there."""
    from pathlib import Path

    out: dict = {"code": code_fingerprint(), "problems": []}
    token_file = Path(token_path)
    try:
        seen = token_file.read_text()
    except OSError as e:
        seen = f"<{e.strerror or e}>"
    if seen != token:
        out["problems"].append(
            f"does not see the run directory the driver writes ({token_file.parent.parent.parent} holds no "
            "preflight file there): put --output on a filesystem shared by every node, at the same path"
        )
    else:
        mine = token_file.with_name(f"{token_file.name}.{os.getpid()}")
        try:
            mine.write_text(token)
            out["wrote"] = str(mine)
        except OSError as e:
            out["problems"].append(
                f"cannot write the run directory {token_file.parent.parent.parent}: {e.strerror or e}"
            )
    missing = [p for p in inputs if not os.path.exists(p)]
    if missing:
        out["problems"].append(
            f"cannot read {len(missing)} of the {len(inputs)} inputs checked (e.g. {missing[0]}): inputs must be on "
            "storage every node reaches (a shared filesystem at the same path, or an fsspec URL)"
        )
    return out


def check_cluster(run_dir, inputs: list[dict], sample: int = 3) -> None:
    """Before any work on a cluster, probe every alive node with a task pinned to it: the project imports there with
    the driver's code, the run directory is the same shared directory and writable, and a sample of the local
    inputs is readable. Raises ClusterNotReady naming the first node and problem found."""
    import secrets
    from pathlib import Path

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe_dir = Path(run_dir) / "_work" / ".preflight"
    probe_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    token_path = probe_dir / token
    token_path.write_text(token)
    local = [r["source_uri"] for r in inputs if "://" not in r["source_uri"] or r["source_uri"].startswith("file://")]
    local = [u.removeprefix("file://") for u in local[:sample]]
    nodes = [n for n in ray.nodes() if n.get("Alive") and _runs_tasks(n)]
    probe = ray.remote(probe_node)
    try:
        refs = {
            n["NodeID"]: probe.options(
                num_cpus=0,
                max_retries=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
            ).remote(str(token_path), token, local)
            for n in nodes
        }
        here = code_fingerprint()
        for node_id, ref in refs.items():
            label = f"node {next(n['NodeManagerAddress'] for n in nodes if n['NodeID'] == node_id)} ({node_id[:8]})"
            try:
                report = ray.get(ref, timeout=PREFLIGHT_TIMEOUT_S)
            except ray.exceptions.GetTimeoutError as e:
                raise ClusterNotReady(f"{label} did not answer the preflight within {PREFLIGHT_TIMEOUT_S:.0f} s") from e
            except (ray.exceptions.TaskUnschedulableError, ray.exceptions.NodeDiedError):
                # A node lost just before (still listed as alive for a few seconds): it takes no work either.
                logger.warning("preflight: %s has left the cluster; it is not checked and gets no work", label)
                continue
            except ray.exceptions.RayError as e:
                raise ClusterNotReady(f"{label} cannot run the project: {_root_cause(e)}{_INSTALL_HINT}") from e
            if report["code"] != here:
                raise ClusterNotReady(
                    f"{label} runs different project code (fingerprint {report['code']}, the driver has {here})"
                    f"{_INSTALL_HINT}"
                )
            if report["problems"]:
                raise ClusterNotReady(f"{label} {report['problems'][0]}")
    finally:
        for path in probe_dir.glob(f"{token}*"):
            path.unlink(missing_ok=True)
    logger.info("preflight: %d nodes can import the project and reach the run directory and inputs", len(nodes))


def _runs_tasks(node: dict) -> bool:
    resources = node.get("Resources", {})
    return resources.get("CPU", 0) > 0 or resources.get("GPU", 0) > 0


_INSTALL_HINT = (
    "; install the same version of this project on every node (pip install from the same checkout or wheel), "
    "or start every node from one shared environment"
)


def _root_cause(error: BaseException) -> str:
    """The innermost exception of a Ray error, in one line (Ray's own message carries the whole remote traceback)."""
    cause = error
    while True:
        inner = getattr(cause, "cause", None) or cause.__cause__
        if inner is None or inner is cause:
            break
        cause = inner
    text = str(cause).strip().splitlines()
    last = next((line for line in reversed(text) if line.strip()), "") if text else ""
    return f"{type(cause).__name__}: {last}" if last else type(cause).__name__
