"""Fault isolation for the clips step: a clip that kills its worker process costs that clip, never the video or run.

Before a batch of clips goes through the annotators, the step writes RUN_DIR/_work/clips/<key>.inflight naming the
batch; it is removed once the video's record is written. When the worker dies (a segfault in a model, the OOM
killer, a lost node), Ray retries the task, and the retry finds the marker:
- the batch had several clips: each of them is now annotated alone, so the next death names one clip;
- one clip, died once: it is tried alone once more (a lost node or a one-off OOM kill is not the clip's fault);
- one clip, died twice alone: it goes to `rejected` with reason `worker_died` and the video carries on.
A marker left by an earlier run of the pipeline (the driver was killed) only makes its clips run alone: the run
that died is not evidence against them.

`FaultConfig` (`[runtime.fault]`) makes one annotator raise, or kill its process, on one clip. It exists for the
tests of this module and of the cluster; leave it empty in real runs.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from curation.tables import atomic_write_json, read_json

MODES = ("raise", "exit")
MAX_SOLO_DEATHS = 2  # deaths of a clip annotated alone before it is rejected as the cause


class InjectedFault(RuntimeError):
    """The failure `[runtime.fault]` asked for (tests only)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class FaultConfig:
    """Test-only fault injection: `annotator` raises (`mode=raise`) or kills its worker process (`mode=exit`) when
    called on a batch holding the clip `clip_id`. Empty = off."""

    annotator: str = ""
    clip_id: str = ""
    mode: str = "raise"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"runtime.fault.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if bool(self.annotator) != bool(self.clip_id):
            raise ValueError("runtime.fault needs both annotator and clip_id (or neither)")

    @property
    def active(self) -> bool:
        return bool(self.annotator)

    def trigger(self, annotator: str, clip_ids: list[str]) -> None:
        """Called before `annotator` runs on a batch: fail as configured when the batch holds the chosen clip."""
        if not self.active or annotator != self.annotator or self.clip_id not in clip_ids:
            return
        if self.mode == "exit":
            os._exit(70)  # no cleanup, no exception: what a segfault in native code looks like to Ray
        raise InjectedFault(f"injected fault in {annotator} on {self.clip_id}")


@dataclasses.dataclass
class CrashGuard:
    """The in-flight marker of one video's clips step (see the module docstring). `session` identifies the driver
    invocation, so a retry within the same run can be told from a rerun after the whole run was killed."""

    path: Path
    session: str
    alone: set[str] = dataclasses.field(default_factory=set)  # clips to annotate one at a time
    suspect: str | None = None  # the clip that was alone in flight when a worker of this run died
    deaths: int = 0  # how many times that happened to `suspect`

    @classmethod
    def open(cls, work_root: Path, key: str, session: str) -> CrashGuard:
        guard = cls(work_root / "clips" / f"{key}.inflight", session)
        if not guard.path.exists():
            return guard
        try:
            marker = read_json(guard.path)
        except (OSError, ValueError):  # a marker torn by the death itself: no evidence either way
            return guard
        clips, same_run = list(marker.get("clips", [])), marker.get("session") == session
        guard.alone = set(clips)
        if same_run and len(clips) == 1:
            guard.suspect, guard.deaths = clips[0], int(marker.get("deaths", 0)) + 1
        return guard

    def is_culprit(self, clip_id: str) -> bool:
        """Whether `clip_id` killed its worker MAX_SOLO_DEATHS times while annotated alone: reject, do not retry."""
        return clip_id == self.suspect and self.deaths >= MAX_SOLO_DEATHS

    def before(self, clip_ids: list[str]) -> None:
        """Record the batch about to be annotated (a solo retry of the suspect carries its death count)."""
        deaths = self.deaths if clip_ids == [self.suspect] else 0
        atomic_write_json({"session": self.session, "clips": clip_ids, "deaths": deaths}, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def died_detail(self) -> str:
        return f"the worker process died {self.deaths} times while annotating this clip alone"
