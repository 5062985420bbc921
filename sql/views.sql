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

-- One row per curated clip in the shards, metadata only: tensor bytes are left out, their shapes kept.
-- (shard, shard_row) locates the clip's tensors for random access. Rows a global stage dropped after they were
-- written (score filters, dedup, the event filter; listed in `rejected`) stay in the files but not in this view.
CREATE OR REPLACE VIEW shards AS
SELECT * FROM (
    SELECT
        COLUMNS(lambda c: c NOT IN ('frames', 'flow', 'global_homography', 'warped_noise', 'camera_c2w',
                                    'camera_tokens', 'camera_intrinsics', 'event_activity', 'event_active', 'event_phase',
                                    'clip_embedding',
                                    'filename', 'file_row_number')
                          AND NOT ends_with(c, '_dtype')),
        parse_filename(filename) AS shard,
        file_row_number AS shard_row,
        parse_dirpath(parse_dirpath(filename)) AS run
    FROM read_parquet(list_transform(getvariable('shard_dirs'), lambda d: d || '/shards/*.parquet'),
                      union_by_name = true, filename = true, file_row_number = true)
) WHERE (run, clip_id) IN (SELECT (run, clip_id) FROM clips);
