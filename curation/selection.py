"""The training selection in SQL (`sql/select_training_set.sql`) and its parameters, taken from a run's config.

The pipeline's global curation (`pipelines.finalize.curate`: score thresholds, near-duplicates, EVD's event filter)
and this SQL select the same clips from the same run; `selection_params` maps the one's config to the other's
parameters. Override any of them to re-tune a selection without rerunning anything.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from curation import storage
from curation.duck import QueryError, connect, load_named, run_query

SELECTION_QUERY = "select_training_set"
PARAMETERS = ("min_scores", "max_scores", "apply_dedup", "event_top_fraction", "drop_diffuse")


def selection_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The SQL parameters equivalent to a resolved run config (`_run.json["config"]`)."""
    filters = config.get("filters", {})
    dedup = config.get("dedup", {})
    events = config.get("events", {})
    flow_on = config.get("flow", {}).get("backend", "none") != "none"
    events_on = bool(events.get("enabled", False)) and flow_on
    return {
        "min_scores": json.dumps(filters.get("min", {}), sort_keys=True),
        "max_scores": json.dumps(filters.get("max", {}), sort_keys=True),
        "apply_dedup": bool(dedup.get("enabled", False)),
        "event_top_fraction": float(events.get("top_fraction", 1.0)) if events_on else 1.0,
        "drop_diffuse": bool(events.get("drop_diffuse", False)) and events_on,
    }


def run_config(run_dir: str | Path) -> dict[str, Any]:
    """The resolved config a run recorded in `_run.json`; `run_dir` may be a URL (`curation.storage`)."""
    path = storage.join(storage.location(run_dir), "_run.json")
    try:
        if not storage.exists(path):
            raise QueryError(f"{run_dir} has no _run.json: the run has not finished")
        return storage.read_json(path)["config"]
    except storage.StorageError as e:
        raise QueryError(str(e)) from e


def configured_params(run_dirs: Sequence[str | Path], given: Collection[str] = ()) -> dict[str, Any]:
    """The parameters of the runs' own configs; QueryError when the runs were curated with different settings
    for a parameter not in `given` (then the caller must choose it)."""
    params = [selection_params(run_config(d)) for d in run_dirs]
    for run_dir, other in zip(run_dirs[1:], params[1:], strict=True):
        differ = sorted(k for k in PARAMETERS if k not in given and other[k] != params[0][k])
        if differ:
            raise QueryError(
                f"{run_dir} was curated with other settings than {run_dirs[0]} ({', '.join(differ)}); "
                "give them explicitly (--param)"
            )
    return params[0]


def check_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Exactly the query's parameters, with values of the right kind; QueryError naming the bad one."""
    unknown = sorted(set(params) - set(PARAMETERS))
    missing = [k for k in PARAMETERS if k not in params]
    if unknown or missing:
        raise QueryError(
            f"{SELECTION_QUERY} takes the parameters {', '.join(PARAMETERS)}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
            + (f"; missing: {', '.join(missing)}" if missing else "")
        )
    out = dict(params)
    for key in ("min_scores", "max_scores"):
        value = out[key]
        try:
            bounds = json.loads(value) if isinstance(value, str) else dict(value)
        except (ValueError, TypeError) as e:
            raise QueryError(f"{key} must be a JSON object {{score: bound}}, got {value!r}") from e
        if not isinstance(bounds, dict):
            raise QueryError(f"{key} must be a JSON object {{score: bound}}, got {value!r}")
        for score, bound in bounds.items():
            if isinstance(bound, bool) or not isinstance(bound, int | float) or not math.isfinite(bound):
                raise QueryError(f"{key}: the bound of {score} must be a finite number, got {bound!r}")
        out[key] = json.dumps(bounds, sort_keys=True)
    for key in ("apply_dedup", "drop_diffuse"):
        out[key] = _as_bool(key, out[key])
    try:
        fraction = float(out["event_top_fraction"])
    except (TypeError, ValueError) as e:
        raise QueryError(f"event_top_fraction must be a number in (0, 1], got {out['event_top_fraction']!r}") from e
    if not (math.isfinite(fraction) and 0.0 < fraction <= 1.0):
        raise QueryError(f"event_top_fraction must be in (0, 1], got {fraction}")
    out["event_top_fraction"] = fraction
    return out


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise QueryError(f"{key} must be true or false, got {value!r}")


def select_training_set(
    run_dirs: str | Path | Sequence[str | Path], overrides: Mapping[str, Any] | None = None
) -> tuple[Any, dict[str, Any]]:
    """Run the selection over one or more runs: (pyarrow Table of the selected clips' shard rows, the parameters
    used). Parameters default to the runs' own config; `overrides` replaces some of them."""
    dirs = [run_dirs] if isinstance(run_dirs, str | Path) else list(run_dirs)
    con = connect(dirs)
    overrides = dict(overrides or {})
    params = check_params({**configured_params(dirs, given=overrides), **overrides})
    return run_query(con, load_named(SELECTION_QUERY), params), params
