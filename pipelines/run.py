"""Entry point: `python -m pipelines.run --stage=all [--input PATH ...] --output RUN_DIR|URL [--staging DIR]
[--config FILE] [--set key=value ...] [--ray-address ADDR]`.

Without --input it runs on the embedded sample corpus (generated into RUN_DIR/_samples). Rerunning the same
command resumes an interrupted run and is a no-op on a finished one. Bad arguments exit with status 2.

An --output URL (`s3://bucket/prefix`) runs into a local staging directory (--staging, else one per URL under
~/.cache/video-curation/staging) and publishes the finished run to the URL, `_run.json` last (`pipelines.publish`);
a publish the store refuses exits with status 1, and rerunning the command resumes it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from annotators.models import ModelLoadError
from curation import storage
from curation.ids import uri_key
from curation.ingest import InputError, discover_inputs
from curation.tables import atomic_write_json, read_json
from pipelines.annotate import preflight_models
from pipelines.config import ConfigError, RunConfig, load_config, work_settings
from pipelines.publish import default_staging, publish, published_run
from pipelines.report import inputs_hash
from pipelines.runtime import (
    ClusterNotReady,
    ClusterUnreachable,
    check_cluster,
    check_ray_address,
    init_ray,
    resolve_address,
)

logger = logging.getLogger("pipelines.run")

STAGES = ("all", "ingest", "scenes", "clips")


class UsageError(Exception):
    """A problem with the command line or the run directory; reported in one line with exit status 2."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipelines.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", default="all", choices=STAGES, help="stage to run (default: all)")
    p.add_argument(
        "--input",
        nargs="+",
        action="extend",
        default=None,
        help="video files, directories, globs, list files or fsspec URLs (default: the sample corpus)",
    )
    p.add_argument(
        "--output",
        default="runs/default",
        help="run directory, or a URL such as s3://bucket/run (default: runs/default)",
    )
    p.add_argument(
        "--staging",
        default=None,
        help="local run directory of an --output URL (default: ~/.cache/video-curation/staging/<hash of the URL>)",
    )
    p.add_argument("--config", default=None, help="TOML preset (default: pipelines/configs/default.toml)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set scenes.threshold=30 (repeatable)",
    )
    p.add_argument("--ray-address", default=None, help="existing Ray cluster (default: RAY_ADDRESS or a local Ray)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def prepare_run_dir(path: str) -> Path:
    run_dir = Path(path)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"--output {path} is not writable: {e.strerror or e}") from e
    return run_dir


def resolve_inputs(specs: list[str] | None, run_dir: Path, cfg: RunConfig) -> tuple[list[dict], list[str]]:
    if not specs:
        from pipelines.samples import generate_corpus

        sample_dir = run_dir / "_samples"
        logger.info("no --input given: using the embedded sample corpus in %s", sample_dir)
        specs = [str(p) for p in generate_corpus(sample_dir)]
    try:
        found = discover_inputs(specs, cfg.ingest.extensions)
    except InputError as e:
        raise UsageError(str(e)) from e
    if found.ignored:
        logger.info("ignored %d files without a video extension (see _run.json)", len(found.ignored))
    if not found.uris:
        raise UsageError(f"--input {' '.join(specs)}: no video files found")
    return [{"source_uri": u, "key": uri_key(u)} for u in found.uris], found.ignored


def check_config_matches(run_dir: Path, cfg: RunConfig) -> None:
    """A run directory belongs to one config of its per-video work: mixing two would make resume inexact. The
    finalize-only sections (filters, dedup) may change: the rerun re-selects clips from the recorded scores."""
    path = run_dir / "_work" / "config.json"
    if path.exists():
        previous = read_json(path)
        if previous["hash"] != cfg.work_hash():
            before, now = work_settings(previous["config"]), work_settings(cfg.to_dict())
            changed = [k for k in now if before.get(k) != now[k]]
            if changed:
                raise UsageError(
                    f"{run_dir} was made with a different config (sections changed: {', '.join(changed)}); "
                    "use a new --output or the same settings"
                )
            # Same work settings under an older hashing rule: adopt the current hash.
            atomic_write_json({"hash": cfg.work_hash(), "config": cfg.to_dict()}, path)
    else:
        atomic_write_json({"hash": cfg.work_hash(), "config": cfg.to_dict()}, path)


def resolve_output(output: str, staging: str | None) -> tuple[str, str | None]:
    """(local run directory, URL to publish to or None) of --output and --staging."""
    if not storage.is_url(output):
        if staging:
            raise UsageError("--staging is only for an --output URL")
        return output, None
    url = str(storage.location(output))  # refuses a URL with credentials in it
    storage.filesystem(url)  # its filesystem package is installed: fail now, not after the run
    local = staging or str(default_staging(url))
    logger.info("--output %s: running in the staging directory %s, published when the run finishes", url, local)
    return local, url


def already_complete(run_dir: Path, stage: str, inputs: list[dict], cfg: RunConfig) -> bool:
    path = run_dir / "_run.json"
    return path.exists() and same_run(read_json(path), stage, inputs, cfg)


def same_run(previous: dict | None, stage: str, inputs: list[dict], cfg: RunConfig) -> bool:
    """`previous` (a `_run.json`) is a complete run of this stage, these inputs and this config."""
    return (
        previous is not None
        and previous.get("status") == "complete"
        and previous.get("stage") == stage
        and previous.get("inputs_hash") == inputs_hash(inputs)
        and previous.get("config_hash") == cfg.content_hash()
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from pipelines.runtime import setup_logging

    setup_logging(args.verbose)
    try:
        cfg = load_config(args.config, args.overrides)
        if address := resolve_address(cfg.runtime, args.ray_address):
            check_ray_address(address)  # before any work: a dead address would otherwise block in ray.init
        output, url = resolve_output(args.output, args.staging)
        run_dir = prepare_run_dir(output)
        inputs, ignored = resolve_inputs(args.input, run_dir, cfg)
        if address:  # every node must import the project and reach the run directory and the inputs
            init_ray(cfg.runtime, address)
            check_cluster(run_dir, inputs)
        check_config_matches(run_dir, cfg)
        preflight_models(cfg)
        # The store already holds this finished run (committed: `_run.json` goes up last): nothing to redo, even
        # when the staging directory is gone.
        if url and same_run(published_run(url), args.stage, inputs, cfg):
            logger.info("%s is already complete for these %d inputs: nothing to do", url, len(inputs))
            return 0
    except (ConfigError, UsageError, ModelLoadError, ClusterUnreachable, ClusterNotReady, storage.StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if already_complete(run_dir, args.stage, inputs, cfg):
        logger.info("%s is already complete for these %d inputs: nothing to do", run_dir, len(inputs))
        print((run_dir / "_summary.txt").read_text() if (run_dir / "_summary.txt").exists() else "")
        return publish_finished(run_dir, url)  # a publish interrupted after the run finished resumes here
    from pipelines.orchestrate import run_stages

    try:
        run_stages(run_dir, args.stage, inputs, ignored, cfg, args.ray_address, started=time.time())
    except (ModelLoadError, ClusterUnreachable) as e:
        # Weights that pass the preflight but fail to load in the workers; a cluster that is not Ray or went away.
        print(f"error: {e}", file=sys.stderr)
        return 2
    return publish_finished(run_dir, url)


def publish_finished(run_dir: Path, url: str | None) -> int:
    """Publish the staged run to `url` (if any) when it is complete; 0, or 1 when the store refused the upload."""
    if url is None:
        return 0
    status = read_json(run_dir / "_run.json").get("status")
    if status != "complete":
        # A partial run is not published: its `_run.json` would commit it. Rerunning finishes it, then publishes.
        logger.warning(
            "the run is %s, not published to %s: rerun the same command (staged in %s)", status, url, run_dir
        )
        return 0
    try:
        publish(run_dir, url)
    except storage.StorageError as e:
        print(f"error: publish: {e} (the finished run is in {run_dir}: rerun to resume)", file=sys.stderr)
        return 1
    logger.info("published %s to %s", run_dir, url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
