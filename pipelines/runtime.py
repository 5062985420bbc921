"""Process setup done once by the entry point: logging, and Ray (local by default, or an existing cluster)."""

from __future__ import annotations

import logging
import os
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


def init_ray(cfg: RuntimeConfig, address: str | None) -> None:
    """Connect to `address` (or RAY_ADDRESS) when given; otherwise start a local Ray with this machine's CPUs."""
    import ray

    if ray.is_initialized():
        return
    address = address or cfg.ray_address or os.environ.get("RAY_ADDRESS") or None
    if address:
        logger.info("connecting to Ray cluster at %s", address)
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    else:
        kwargs: dict = {"num_cpus": cfg.num_cpus or os.cpu_count() or 1, "include_dashboard": False}
        if cfg.object_store_mb:
            kwargs["object_store_memory"] = cfg.object_store_mb * 1024**2
        # A local run stays on loopback: no ports exposed to the network, no firewall prompts.
        ray.init(
            address="local", _node_ip_address="127.0.0.1", logging_level=logging.WARNING, log_to_driver=False, **kwargs
        )
        logger.info("started local Ray with %d CPUs", kwargs["num_cpus"])
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty()
    ctx.print_on_execution_start = False
    # A worker that dies (a decoder crashing on a broken file) loses its block; the driver then records the
    # affected inputs as rejected instead of failing the run. Exceptions inside steps never get here.
    ctx.max_errored_blocks = -1
