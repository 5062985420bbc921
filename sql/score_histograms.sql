-- Histogram of every score column of `clips` (the `score_columns` variable: what `[filters.min]` / `[filters.max]`
-- can threshold):
-- 20 equal-width bins between the score's min and max over the curated clips. Scores that were not computed
-- (all null, e.g. aesthetic_score without weights) have no rows. Look here before choosing a threshold.
WITH scores AS (
    UNPIVOT (
        SELECT
            clip_id,
            COLUMNS(lambda c: list_contains(getvariable('score_columns'), c))::DOUBLE
        FROM clips
    ) ON COLUMNS(* EXCLUDE (clip_id)) INTO NAME score VALUE value
),
ranges AS (
    SELECT score, min(value) AS lo, max(value) AS hi FROM scores WHERE isfinite(value) GROUP BY score
),
binned AS (
    SELECT
        s.score,
        r.lo,
        r.hi,
        CASE WHEN r.hi > r.lo THEN least(19, floor((s.value - r.lo) / (r.hi - r.lo) * 20)) ELSE 0 END::INTEGER AS bin
    FROM scores AS s
    JOIN ranges AS r USING (score)
    WHERE isfinite(s.value)
)
SELECT
    score,
    bin,
    lo + bin * (hi - lo) / 20 AS bin_start,
    CASE WHEN hi > lo THEN lo + (bin + 1) * (hi - lo) / 20 ELSE hi END AS bin_end,
    count(*) AS clips
FROM binned
GROUP BY ALL
ORDER BY score, bin;
