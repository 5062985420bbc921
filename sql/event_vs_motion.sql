-- Event score against motion, one row per shard row (curated and dropped): camera-dominated clips move a lot but
-- have little localized change (high motion_mean, low event_score, low motion_residual); object clips have
-- event_score high relative to motion. `ratio` = event_score / motion_mean; `corr_in_run` = the Pearson
-- correlation of event_score and motion_mean over the run's scored clips; `kept` and `dropped_by` say what the
-- curation did with the clip.
SELECT
    s.clip_id,
    s.source_uri,
    round(s.event_score, 5) AS event_score,
    round(s.motion_mean, 5) AS motion_mean,
    round(s.motion_residual, 5) AS motion_residual,
    round(s.event_score / nullif(s.motion_mean, 0), 3) AS ratio,
    s.event_diffuse AS diffuse,
    round(corr(s.event_score, s.motion_mean) OVER (PARTITION BY s.run), 3) AS corr_in_run,
    c.clip_id IS NOT NULL AS kept,
    r.stage || '/' || r.reason AS dropped_by,
    s.run
FROM shard_rows AS s
LEFT JOIN clips AS c ON c.run = s.run AND c.clip_id = s.clip_id
LEFT JOIN rejected AS r ON r.run = s.run AND r.clip_id = s.clip_id
WHERE s.event_score IS NOT NULL AND s.motion_mean IS NOT NULL
ORDER BY s.run, s.event_score DESC;
