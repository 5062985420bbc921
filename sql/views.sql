-- Views over one or more run directories. Set the directories first:
--   SET VARIABLE run_dirs = ['/path/to/run', ...];   SET VARIABLE shard_dirs = [...];  (runs with shard files)
-- (curation.duck.connect does this for you.) Every view has a `run` column: the run directory it came from.

-- One run table (videos, scenes, clips or rejected) over every run, with the `run` it came from.
CREATE OR REPLACE MACRO run_table(name) AS TABLE
SELECT * EXCLUDE (filename), parse_dirpath(parse_dirpath(filename)) AS run
FROM read_parquet(list_transform(getvariable('run_dirs'), lambda d: d || '/' || name || '/*.parquet'),
                  union_by_name = true, filename = true);

-- One row per input file: probe results, or the error that stopped it.
CREATE OR REPLACE VIEW videos AS SELECT * FROM run_table('videos');

-- One row per detected shot (before clip filtering); transition = start | cut | fade.
CREATE OR REPLACE VIEW scenes AS SELECT * FROM run_table('scenes');

-- One row per curated clip, with its shard location.
CREATE OR REPLACE VIEW clips AS SELECT * FROM run_table('clips');

-- One row per dropped clip or failed input: stage, reason (snake_case), detail.
CREATE OR REPLACE VIEW rejected AS SELECT * FROM run_table('rejected');

-- One row per row of the shard files, metadata only: tensor bytes are left out, their shapes kept. This includes
-- the rows of clips a global stage dropped after they were written (score filters, dedup, the event filter; listed
-- in `rejected` with their reason): every score of every candidate clip, for re-tuning thresholds in SQL.
-- (run, shard, shard_row) locates a clip's tensors for random access.
CREATE OR REPLACE VIEW shard_rows AS
SELECT
    COLUMNS(lambda c: c NOT IN ('frames', 'flow', 'global_homography', 'warped_noise', 'camera_c2w',
                                'camera_tokens', 'camera_intrinsics', 'event_activity', 'event_active', 'event_phase',
                                'clip_embedding', 'latents', 'text_embedding',
                                'filename', 'file_row_number')
                      AND NOT ends_with(c, '_dtype')),
    parse_filename(filename) AS shard,
    file_row_number AS shard_row,
    parse_dirpath(parse_dirpath(filename)) AS run
FROM read_parquet(list_transform(getvariable('shard_dirs'), lambda d: d || '/shards/*.parquet'),
                  union_by_name = true, filename = true, file_row_number = true);

-- The curated clips' shard rows: `shard_rows` restricted to the `clips` table, which is what iter_clips and
-- training read.
CREATE OR REPLACE VIEW shards AS
SELECT * FROM shard_rows WHERE (run, clip_id) IN (SELECT (run, clip_id) FROM clips);

-- One row per run: how it ended, what it was made with and how long it took (from each run's `_run.json`).
CREATE OR REPLACE VIEW runs AS
SELECT
    parse_dirpath(filename) AS run,
    status,
    stage,
    schema_version,
    config_hash,
    inputs_hash,
    config_hash || '-' || inputs_hash AS run_id,
    inputs,
    counts,
    wall_seconds,
    worker_seconds,
    config,
    versions,
    make_timestamp((written_at * 1e6)::BIGINT) AS finished_at
FROM read_json(getvariable('run_json_files'), union_by_name = true, filename = true);
