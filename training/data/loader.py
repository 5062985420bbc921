"""The loader: `make_loader` opens the source and returns a `Loader`, which plans each epoch, schedules decodes,
replaces bad rows, yields batches on the device and saves/restores its position; `LoaderStats` counts it all."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from training.data.config import STATE_VERSION, DataConfig
from training.data.decode import _BadRow, _collate, _Decoder
from training.data.order import _Plan, _plan, bucket_sizes
from training.data.producer import _Keyed, _Producer
from training.data.source import _geometry, _open_source, _Source

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# Stats


@dataclasses.dataclass
class LoaderStats:
    """Counters for logs and the train loop: `wait_s` over the step time is the share spent waiting for data."""

    samples_yielded: int = 0
    batches_yielded: int = 0
    rows_decoded: int = 0
    rows_skipped: int = 0  # bad rows met (each time one is met), replaced in their batch
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)  # reason -> count
    padded_samples: int = 0  # per epoch: samples this rank repeats so every rank has as many (per bucket)
    batches_per_bucket: dict[str, int] = dataclasses.field(default_factory=dict)  # bucket name -> batches yielded
    wait_s: float = 0.0  # consumer time blocked on the next batch
    last_wait_s: float = 0.0
    decode_s: float = 0.0  # read + decode time summed over threads
    bytes_read: int = 0  # uncompressed Arrow bytes of the columns read

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------------------
# The loader


class Loader:
    """Batches of curated clips for one rank; see the `training.data` docstring for order, resume and DDP padding."""

    def __init__(
        self, cfg: DataConfig, src: _Source, rank: int, world_size: int, device: str | torch.device = "cpu"
    ) -> None:
        self.cfg, self.src, self.rank, self.world_size = cfg, src, rank, world_size
        self.device = torch.device(device)
        self.geo = _geometry(cfg, src)
        self.noise_source = self.geo.noise_source
        self.pin = self.device.type == "cuda" and torch.cuda.is_available()
        self.stats = LoaderStats()
        self._lock = threading.Lock()
        self._decoder = _Decoder(src, self.geo, self.stats, self._lock)
        self._executor: cf.ThreadPoolExecutor | None = None
        self._producer: _Producer | None = None
        self._plan_cache: _Plan | None = None
        self._warned: set[tuple[str, str]] = set()
        self.epoch, self.cursor = 0, 0
        # Each unit's bucket: the batch shape its rows decode to.
        self._unit_bucket = np.array(
            [self.geo.bucket_of[(src.shards[u.shard].run, u.shape)] for u in src.units], np.int64
        )
        sizes = bucket_sizes(src, cfg, world_size, self._unit_bucket)
        self.num_samples = int(sizes[:, 0].sum())  # per rank, padded per bucket
        self.bucket_samples = {b.name: int(n) for b, n in zip(self.geo.buckets, sizes[:, 0], strict=True)}
        self.bucket_batches = {b.name: int(n) for b, n in zip(self.geo.buckets, sizes[:, 1], strict=True)}
        self._num_batches = int(sizes[:, 1].sum())
        b = cfg.batch_size
        self._emitted = int(np.minimum(sizes[:, 0], sizes[:, 1] * b).sum())  # positions in batches per epoch
        if self.num_batches == 0:
            raise ValueError(
                f"{self.num_samples} samples per rank < batch_size {cfg.batch_size} with drop_last: no batch per epoch"
                + (f" (every bucket is smaller: {self.bucket_samples})" if len(sizes) > 1 else "")
            )
        small = [f"{k} ({n})" for k, n in self.bucket_samples.items() if n < b and cfg.drop_last]
        if small:
            logger.warning(
                "data: buckets with fewer samples per rank than batch_size %d are never batched (drop_last): %s",
                b,
                ", ".join(small),
            )

    # -- sizes and state --------------------------------------------------------------------------------------

    @property
    def num_batches(self) -> int:
        """Batches per rank per epoch: the sum over buckets (each batch is one bucket), equal on every rank."""
        return self._num_batches

    def __len__(self) -> int:
        return self.num_batches

    def _epoch_end(self) -> int:
        """The last output position (exclusive) of the epoch: the end of its last batch."""
        return self._emitted

    def _epoch_plan(self, epoch: int) -> _Plan:
        if self._plan_cache is None or self._plan_cache.epoch != epoch:
            self._plan_cache = _plan(self.src, self.cfg, epoch, self.rank, self.world_size, self._unit_bucket)
        return self._plan_cache

    def state_dict(self) -> dict[str, Any]:
        """Where the next batch starts: (epoch, cursor = samples of this epoch already handed out); the rest checks
        that a resumed loader sees the same data and order. The same on every rank, so rank 0's copy serves all."""
        position = None
        if self.cursor < self.num_samples:
            plan = self._epoch_plan(self.epoch)
            stream = int(plan.order[self.cursor])
            unit = self.src.units[int(plan.stream_unit[stream])]
            shard = self.src.shards[unit.shard]
            item = int(plan.stream_item[stream])
            position = {
                "bucket": self.geo.buckets[int(self._unit_bucket[int(plan.stream_unit[stream])])].name,
                "run": self.src.runs[shard.run].key or str(self.src.runs[shard.run].path),
                "shard": shard.name,
                "row_group": unit.group,
                "row": shard.starts[unit.group] + unit.rows[item],
                "clip_id": unit.clip_ids[item],
            }
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "cursor": self.cursor,
            "samples_per_epoch": self.num_samples,
            "batch_size": self.cfg.batch_size,
            "seed": self.cfg.seed,
            "shuffle_buffer": self.cfg.shuffle_buffer,
            "world_size": self.world_size,
            "rank": self.rank,
            "source": self.src.fingerprint,
            "buckets": [b.name for b in self.geo.buckets],
            "next": position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where `state` was taken. Refuses (ValueError) when the order would differ: another
        source content, seed, shuffle buffer, world size or buckets."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')}, this code reads {STATE_VERSION}")
        mine = self.state_dict()
        for key in ("source", "seed", "shuffle_buffer", "world_size", "samples_per_epoch"):
            if state.get(key) != mine[key]:
                raise ValueError(
                    f"loader state does not match this loader: {key} {state.get(key)!r} != {mine[key]!r} "
                    "(exact resume needs the same data, seed, shuffle buffer and world size)"
                )
        if "buckets" in state and state["buckets"] != mine["buckets"]:  # states written before buckets lack it
            raise ValueError(
                f"loader state does not match this loader: buckets {state['buckets']} != {mine['buckets']} "
                "(exact resume needs the same batch shapes: latent_size, token grid)"
            )
        epoch, cursor = int(state["epoch"]), int(state["cursor"])
        if epoch < 0 or not 0 <= cursor <= self.num_samples:
            raise ValueError(f"loader state: bad epoch/cursor {epoch}/{cursor}")
        if cursor < self._epoch_end() and cursor not in set(self._epoch_plan(epoch).batch_start.tolist()):
            raise ValueError(f"loader state: cursor {cursor} is not the start of a batch of epoch {epoch}")
        self._stop()
        self.epoch, self.cursor = epoch, cursor
        if self._epoch_end() <= self.cursor:  # nothing left in that epoch: start the next one
            self.epoch, self.cursor = epoch + 1, 0

    # -- iteration --------------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The rest of the current epoch (all of it from a fresh start), one batch at a time."""
        self._stop()
        epoch, end = self.epoch, self._epoch_end()
        batches = self._batches(self._epoch_plan(epoch), self.cursor, end)
        producer = None
        if self.cfg.num_workers > 0:
            self._producer = producer = _Producer(batches, self.cfg.prefetch_batches)
        try:
            while True:
                t0 = time.perf_counter()
                if producer is not None:
                    kind, item = producer.get()
                    if kind == "error":
                        raise item
                    if kind == "end":
                        return
                else:
                    item = next(batches, None)
                    if item is None:
                        return
                stop, batch = item
                batch = self._to_device(batch)
                bucket = batch["bucket"]
                waited = time.perf_counter() - t0
                # State first: once the caller holds the batch, a checkpoint must point past it.
                self.cursor = stop
                if stop >= end:
                    self.epoch, self.cursor = epoch + 1, 0
                with self._lock:
                    self.stats.wait_s += waited
                    self.stats.last_wait_s = waited
                    self.stats.batches_yielded += 1
                    self.stats.samples_yielded += len(batch["clip_id"])
                    self.stats.batches_per_bucket[bucket] = self.stats.batches_per_bucket.get(bucket, 0) + 1
                yield batch
        finally:
            # Only this iterator's thread: an abandoned iterator collected later must not stop a newer one.
            if producer is not None:
                producer.stop()
                if self._producer is producer:
                    self._producer = None
            else:
                batches.close()

    def batches(self) -> Iterator[dict[str, Any]]:
        """Endless: epoch after epoch, each in its own order."""
        while True:
            yield from self

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.device.type == "cpu":
            return batch
        return {k: v.to(self.device, non_blocking=self.pin) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _batches(self, plan: _Plan, cursor: int, end: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """(cursor after the batch, CPU batch) for positions [cursor, end), decoding only what is emitted."""
        self.stats.padded_samples = plan.padded
        # Numpy over the epoch (a few int arrays), no per-sample Python objects: epochs may hold millions of clips.
        pos_of = np.empty(plan.samples, np.int64)
        pos_of[plan.order] = np.arange(plan.samples)
        wanted = (pos_of >= cursor) & (pos_of < end)  # stream samples still to be emitted this epoch
        n_reads = len(plan.read_unit)
        # Each read is needed from the first position that emits one of its rows; decode in that order.
        first = np.full(n_reads, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(first, plan.read_of[wanted], pos_of[wanted])
        remaining = np.bincount(plan.read_of[wanted], minlength=n_reads)
        schedule = np.argsort(first, kind="stable")[: int(np.count_nonzero(remaining))].tolist()
        pending: dict[int, _Keyed | dict[int, Any]] = {}
        submitted = 0
        ahead = max(2, 2 * self.cfg.num_workers)

        def submit(r: int) -> None:
            span = np.arange(plan.read_start[r], plan.read_start[r + 1])
            stream_ids = span[wanted[span]].tolist()
            unit = self.src.units[int(plan.read_unit[r])]
            rows = [int(plan.stream_item[s]) for s in stream_ids]
            if self.cfg.num_workers > 0:
                pending[r] = _Keyed(self._pool().submit(self._decoder.read, unit, rows), stream_ids)
            else:
                pending[r] = dict(zip(stream_ids, self._decoder.read(unit, rows), strict=True))

        def take(p: int) -> Any:
            s = int(plan.order[p])
            r = int(plan.read_of[s])
            got = pending[r]
            if isinstance(got, _Keyed):
                got = pending[r] = got.result()
            sample = got.pop(s)
            remaining[r] -= 1
            if not remaining[r]:
                del pending[r]
            return sample

        first_batch = int(np.searchsorted(plan.batch_start, cursor))
        try:
            for k in range(first_batch, len(plan.batch_start) - 1):
                start, stop = int(plan.batch_start[k]), int(plan.batch_start[k + 1])
                if start >= end:
                    break
                # Keep the decode threads busy with the reads needed next, a bounded number ahead.
                while submitted < len(schedule) and (
                    first[schedule[submitted]] < stop or sum(1 for r in pending if first[r] >= stop) < ahead
                ):
                    submit(schedule[submitted])
                    submitted += 1
                samples = [take(p) for p in range(start, stop)]
                bucket = self.geo.buckets[int(plan.batch_bucket[k])]
                yield stop, _collate(self._replace_bad(samples, plan, k), self.geo, bucket, self.pin)
        finally:
            for got in pending.values():
                if isinstance(got, _Keyed):
                    got.future.cancel()

    def _replace_bad(self, samples: list[Any], plan: _Plan, batch: int) -> list[dict[str, Any]]:
        bad = [i for i, s in enumerate(samples) if isinstance(s, _BadRow)]
        if not bad:
            return samples
        for i in bad:
            self._note_bad(samples[i])
        good = [s for s in samples if not isinstance(s, _BadRow)]
        # A wholly bad batch borrows the next valid samples of its bucket (wrapping, so the shapes hold): a function
        # of the data and the plan only, so a resumed run borrows the same ones.
        for i in plan.bucket_positions(batch, len(samples)) if not good else ():
            s = int(plan.by_bucket[i])
            unit = self.src.units[int(plan.stream_unit[s])]
            found = self._decoder.read(unit, [int(plan.stream_item[s])])[0]
            if not isinstance(found, _BadRow):
                good.append(found)
                break
        if not good:
            bucket = self.geo.buckets[int(plan.batch_bucket[batch])].name
            raise ValueError(
                f"epoch {plan.epoch}: no valid sample of bucket {bucket} on rank {self.rank}; see the warnings"
            )
        return [good[k % len(good)] if isinstance(s, _BadRow) else s for k, s in enumerate(samples)]

    def _note_bad(self, row: _BadRow) -> None:
        reason = row.reason.split(":", 1)[0]
        with self._lock:
            self.stats.rows_skipped += 1
            self.stats.skipped[reason] = self.stats.skipped.get(reason, 0) + 1
        if (row.clip_id, reason) not in self._warned:
            self._warned.add((row.clip_id, reason))
            logger.warning(
                "data: clip %s skipped (%s); replaced by another sample of its batch", row.clip_id, row.reason
            )

    def _pool(self) -> cf.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = cf.ThreadPoolExecutor(self.cfg.num_workers, thread_name_prefix="loader-decode")
        return self._executor

    def _stop(self) -> None:
        if self._producer is not None:
            self._producer.stop()
            self._producer = None

    def close(self) -> None:
        """Stop the background threads; iterating again starts them anew."""
        self._stop()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: nothing left to stop
            self.close()


def make_loader(cfg: DataConfig, rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu") -> Loader:
    """A loader for `rank` of `world_size` (under torchrun: `rank=int(os.environ["RANK"])`,
    `world_size=int(os.environ["WORLD_SIZE"])`). ValueError for an empty, missing or unusable source."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    return Loader(cfg, _open_source(cfg.source), rank, world_size, device)
