"""Process setup done once by the entry point: logging, and Ray (local by default, or an existing cluster)."""

from __future__ import annotations

import logging
import os
import re
import socket
import sys

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


def init_ray(cfg: RuntimeConfig, address: str | None) -> dict:
    """Connect to `address` (or RAY_ADDRESS) when given; otherwise start a local Ray with this machine's CPUs.
    Returns what the run used ({"address", "nodes", "cpus"}), recorded in _run.json."""
    import ray

    if ray.is_initialized():
        return cluster_info(resolve_address(cfg, address) or "local")
    address = resolve_address(cfg, address)
    if address:
        check_ray_address(address)
        logger.info("connecting to Ray cluster at %s", address)
        # Client mode (ray://) runs no local node, so there is no node address to choose.
        ip = None if address.startswith("ray://") else node_ip_for(address)
        try:
            ray.init(
                address=address,
                logging_level=logging.WARNING,
                log_to_driver=False,
                **({"_node_ip_address": ip} if ip else {}),
            )
        except (ConnectionError, TimeoutError, ray.exceptions.AuthenticationError) as e:
            raise ClusterUnreachable(f"--ray-address {address}: cannot join the Ray cluster: {e}") from e
        info = cluster_info(address)
        logger.info("joined Ray cluster at %s: %d nodes, %g CPUs", address, info["nodes"], info["cpus"])
    else:
        kwargs: dict = {"num_cpus": cfg.num_cpus or os.cpu_count() or 1, "include_dashboard": False}
        if cfg.object_store_mb:
            kwargs["object_store_memory"] = cfg.object_store_mb * 1024**2
        # A local run stays on loopback: no ports exposed to the network, no firewall prompts.
        ray.init(
            address="local", _node_ip_address="127.0.0.1", logging_level=logging.WARNING, log_to_driver=False, **kwargs
        )
        logger.info("started local Ray with %d CPUs", kwargs["num_cpus"])
        info = cluster_info("local")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty()
    ctx.print_on_execution_start = False
    # A worker that dies (a decoder crashing on a broken file) loses its block; the driver then records the
    # affected inputs as rejected instead of failing the run. Exceptions inside steps never get here.
    ctx.max_errored_blocks = -1
    return info


def cluster_info(address: str) -> dict:
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    return {"address": address, "nodes": len(alive), "cpus": ray.cluster_resources().get("CPU", 0.0)}
