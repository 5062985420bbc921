"""Training data loader: streams curated clips from Parquet shards into batches of tensors.

    from training.data import DataConfig, make_loader

    cfg = DataConfig(source="runs/sample", batch_size=8)
    loader = make_loader(cfg)  # one process; under torchrun every process passes its own rank:
    loader = make_loader(
        cfg, rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
        device=f"cuda:{os.environ['LOCAL_RANK']}",
    )
    for step, batch in enumerate(loader.batches()):   # endless; `for batch in loader` is one epoch
        ...
        checkpoint["data"] = loader.state_dict()       # JSON; `loader.load_state_dict(state)` resumes there

Space (`space`, `training.data.space`). Latent space (auto: when every run stores VAE latents) serves the stored
`latents` and never reads the frames; pixel space area-pools the frames. Every run of a source must come from one
VAE and one text encoder (`vae_hash` / `text_encoder_hash` pin them: a training run's), else ValueError.

A batch (a dict on `device`; B = batch_size; every batch is one *bucket*: T frames (T' latent frames of a video
VAE in latent space), (h, w) latent size, C = latent_channels: 3 in pixel space, the VAE's channels otherwise):
- `latents` (B, C, T, h, w) float32: latent space, the stored normalised VAE latents (C, T', h, w); pixel space,
  in [-1, 1], the frames area-resized to the bucket's warped-noise grid (frames / noise factor), or
  `latent_size`, or the frame size;
- `noise` (B, C, T, h, w) float32: the first C channels of the clip's warped noise (i.i.d. channels, so a subset
  keeps the statistics). Only when every source run stores noise on the latent grid with >= C channels; else the
  key is absent (never made up). `noise_source` (str) is "warped_noise" or "absent: <why>";
- `camera_tokens` (B, T-1) int64 QCM tokens (absent when no run has them; a null row is all 0 = "none"),
  `has_camera` (B,) bool. In latent space one token per latent step: the majority of its source steps;
- `rays` (B, 6, T, h, w) float32, only with `camera_rays`: the camera as AAPT's per-pixel ray origin (3) and unit
  direction (3) of each latent frame relative to the previous one (frame 0: the identity), on the batch's latent
  grid (`training.camera_rays.ray_embedding` of the stored `camera_c2w`, its `camera_intrinsics` scaled from the
  flow grid), scaled to about unit std (`origin_std_for(temporal_factor)`, `DIRECTION_STD`). Latent space: latent
  frame k is stored frame 4k (the 1 + 4k rule), so a step spans 4 stored steps. A row without camera poses is zeros
  (`has_camera` keeps its meaning: the row has camera tokens);
- `text_embedding` (B, L, D) float16, the stored trimmed embeddings zero-padded to the encoder's `max_length` L,
  `text_mask` (B, L) bool (True = real token), `text_length` (B,) int64: when `text_embeddings` (default: every
  run stores them); a clip without one gets length 0 (the null prompt);
- `event_activity` (B, T', H', W') float32 pooled (`pool_event_maps`) to `token_grid`, else to the bucket's latent
  grid / `token_patch` (the model's token grid), else kept at the stored grid; absent when no run has events; a null
  row is zeros; maps stored per frame or per latent frame are first aligned to the latents' frames (max over each
  latent frame's group, or repeated over it). `has_events` (B,) bool, `event_confidence` (B,) float32 (null -> 0);
- `text`: list[str] (caption, else camera_text, else ""), `clip_id`: list[str], `bucket`: str ("TxHxW").
Tensors are collated in pinned memory and copied with `non_blocking=True` when `device` is CUDA.

Sources: a run directory (the curated `clips` table selects shard rows, in manifest order) or a snapshot directory
(`curation.snapshot`: its `clips.parquet` order, rows in several runs; the source shards are verified first).

Buckets. A run curated with `[buckets]` stores clips at several (T, H, W) shapes (the `bucket` column; the
manifest's tensor shapes use the symbols T, H, W, resolved per bucket). Rows whose samples come out the same shape
form one loader bucket (`geo.buckets`); without `[buckets]` there is one, and everything below reduces to the
order the loader had before buckets.

Order. Everything is a pure function of (seed, epoch, rank, world_size, source metadata), computed from row counts
before any tensor is read. Per bucket:
1. the bucket's *units* (its curated rows of one Parquet row group) are permuted (no permutation when
   `shuffle_buffer == 0`: source order);
2. the resulting sample sequence is cut into `world_size` contiguous, balanced chunks (a row group is read by at
   most two ranks); every rank gets `ceil(N_bucket / world_size)` samples: a short rank repeats its own first
   samples, as `torch.utils.data.DistributedSampler` pads by repetition (`stats.padded_samples`);
3. a seeded shuffle buffer of `shuffle_buffer` samples runs over the rank's stream, which is cut into batches (the
   last partial one dropped with `drop_last`). The buffer is simulated on indices, so the loader knows which
   stream sample is emitted at every position of the epoch.
Then the list of (bucket, batch) is permuted with a key of (seed, epoch) alone (not with one bucket, nor without
shuffle: bucket after bucket), so every rank yields the same number of batches, of the same bucket at every step,
and DDP never waits on a rank that ran out.
A resume therefore needs only (epoch, cursor = a batch boundary): the loader decodes exactly the rows still to be
emitted (the ones "in the buffer" and after), never the skipped ones. Decode threads (`num_workers`) take row
groups as they come, but batches are assembled in the planned order, so timing never changes the order. The random
numbers come from a counter-based splitmix64 (not numpy's generators), so the order survives library upgrades too.

Bad rows (null or malformed frames, null or malformed warped noise when noise is served, malformed camera tokens,
camera poses (when rays are served) or event maps, a shard row that holds another clip than the selection says) are
logged once per clip, counted in `stats.skipped` and replaced by another valid sample of the same batch (or, if
the whole batch is bad, the next valid samples of its bucket), so batch shapes and the number of batches per rank
never change.

Memory: the decoded samples waiting to be emitted (at most about `shuffle_buffer` plus the row groups being
decoded, `2 * num_workers` ahead) and `prefetch_batches` collated batches; shards are read one row group at a
time, only the needed columns. `stats` counts samples, skipped rows and the seconds the consumer waited.

Modules: `config` (`DataConfig`), `space` (pixel or latent, model identities, time alignment), `order` (the
random numbers, shuffle buffer and epoch plan), `source` (runs, snapshots, shards, buckets and their batch
geometry), `decode` (rows to tensors, collation), `producer` (the background batch thread) and `loader` (`Loader`,
`LoaderStats`, `make_loader`). Import from `training.data`.
"""

from training.data.config import NOISE_KEY, STATE_VERSION, DataConfig
from training.data.decode import clip_rays, pool_event_maps
from training.data.loader import Loader, LoaderStats, make_loader
from training.data.order import _plan as _plan
from training.data.order import shuffle_buffer_order
from training.data.source import _Source as _Source
from training.data.source import _Unit as _Unit

__all__ = [
    "NOISE_KEY",
    "STATE_VERSION",
    "DataConfig",
    "Loader",
    "LoaderStats",
    "clip_rays",
    "make_loader",
    "pool_event_maps",
    "shuffle_buffer_order",
]
