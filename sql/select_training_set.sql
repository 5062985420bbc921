-- The training selection, as SQL: the pipeline's global curation stages re-expressed over every shard row, so a
-- data team can re-tune thresholds here and get exactly the set the pipeline would keep. In order:
--   1. score thresholds ([filters]): a clip leaves when a score is below $min_scores[score] or above
--      $max_scores[score]; a null or NaN score never drops a clip. The run's camera-embedding outliers
--      ([filters.camera]: rejected rows of reason `camera_outlier`, decided from the shards' camera tensors over
--      every clip, so independent of the thresholds) always leave;
--   2. near-duplicates ([dedup]): with $apply_dedup, the run's own dedup decisions (rejected rows of stage `dedup`);
--      they were made among the clips that passed the run's configured thresholds;
--   3. EVD's event filter ([events]): with $drop_diffuse, clips flagged event_diffuse leave; then the top
--      $event_top_fraction of the rest by event_score stay (ties at the cutoff stay; 1.0 keeps all), per run.
--      Clips without an event score are kept.
-- Parameters (all required; `python -m curation.snapshot` fills them from the run's config):
--   $min_scores, $max_scores  JSON objects {score column: bound}, e.g. '{"sharpness": 20}'; '{}' for none
--   $apply_dedup              BOOLEAN
--   $event_top_fraction       DOUBLE in (0, 1]
--   $drop_diffuse             BOOLEAN
-- The score columns are those `[filters]` accepts (the `score_columns` variable); an unknown one is an error.
WITH bounds AS (
    SELECT 'min' AS side, key AS score, TRY_CAST(value AS DOUBLE) AS bound FROM json_each($min_scores::JSON)
    UNION ALL
    SELECT 'max' AS side, key AS score, TRY_CAST(value AS DOUBLE) AS bound FROM json_each($max_scores::JSON)
),
checked AS (
    SELECT
        side,
        score,
        CASE
            WHEN NOT list_contains(getvariable('score_columns'), score)
                THEN error('unknown score column ' || score || '; scores: '
                           || array_to_string(getvariable('score_columns'), ', '))
            WHEN bound IS NULL OR NOT isfinite(bound)
                THEN error(side || ' bound of ' || score || ' must be a finite number')
            ELSE bound
        END AS bound
    FROM bounds
),
fraction AS (
    SELECT CASE
        WHEN $event_top_fraction::DOUBLE > 0 AND $event_top_fraction::DOUBLE <= 1 THEN $event_top_fraction::DOUBLE
        ELSE error('event_top_fraction must be in (0, 1], got ' || $event_top_fraction::VARCHAR)
    END AS top
),
scores AS (
    UNPIVOT (
        SELECT run, clip_id, COLUMNS(lambda c: list_contains(getvariable('score_columns'), c))::DOUBLE
        FROM shard_rows
    ) ON COLUMNS(* EXCLUDE (run, clip_id)) INTO NAME score VALUE value
),
below_or_above AS (
    SELECT DISTINCT s.run, s.clip_id
    FROM scores AS s
    JOIN checked AS b USING (score)
    WHERE NOT isnan(s.value) AND ((b.side = 'min' AND s.value < b.bound) OR (b.side = 'max' AND s.value > b.bound))
),
-- NOT MATERIALIZED: `passed` is read twice; materialized, DuckDB held every column of every passing row at once and
-- ran out of its 4 GB at 10 M clips (bench/metadata_scale.py), where two streamed scans of the shards fit.
passed AS NOT MATERIALIZED (
    SELECT * FROM shard_rows
    WHERE (run, clip_id) NOT IN (SELECT (run, clip_id) FROM below_or_above)
      AND (run, clip_id) NOT IN (
          SELECT (run, clip_id) FROM rejected
          WHERE stage = 'filters' AND reason = 'camera_outlier' AND clip_id IS NOT NULL
      )
      AND NOT (
          $apply_dedup::BOOLEAN
          AND (run, clip_id) IN (SELECT (run, clip_id) FROM rejected WHERE stage = 'dedup' AND clip_id IS NOT NULL)
      )
),
eventful AS (
    -- Clips the event filter ranks: scored, and not dropped as diffuse.
    SELECT run, event_score,
           count(*) OVER (PARTITION BY run) AS pool,
           row_number() OVER (PARTITION BY run ORDER BY event_score DESC) AS rank
    FROM passed
    WHERE event_score IS NOT NULL AND NOT ($drop_diffuse::BOOLEAN AND coalesce(event_diffuse, false))
),
cutoff AS (
    -- The score of the last clip inside the top fraction (EVD: rank ceil(fraction * pool), at least 1).
    SELECT run, event_score AS min_event_score
    FROM eventful, fraction
    WHERE fraction.top < 1 AND rank = greatest(1, ceil(fraction.top * pool))
)
SELECT p.*
FROM passed AS p
LEFT JOIN cutoff AS c USING (run)
WHERE p.event_score IS NULL
   OR (NOT ($drop_diffuse::BOOLEAN AND coalesce(p.event_diffuse, false))
       AND (c.min_event_score IS NULL OR p.event_score >= c.min_event_score))
ORDER BY p.run, p.source_uri, p.start_frame, p.clip_id;
