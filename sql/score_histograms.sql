-- Histogram of every score column of `clips` (the columns `[filters.min]` / `[filters.max]` can threshold):
-- 20 equal-width bins between the score's min and max over the curated clips. Scores that were not computed
-- (all null, e.g. aesthetic_score without weights) have no rows. Look here before choosing a threshold.
WITH scores AS (
    UNPIVOT (
        SELECT
            clip_id,
            COLUMNS(lambda c: c IN ('fps', 'width', 'height', 'motion_mean', 'motion_p90', 'motion_residual',
                                    'camera_confidence', 'event_score', 'event_confidence', 'event_entropy',
                                    'event_gini', 'sharpness', 'brightness', 'contrast', 'colorfulness',
                                    'clipped_dark', 'clipped_bright', 'aesthetic_score'))::DOUBLE
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
