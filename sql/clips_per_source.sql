-- Per source video: seconds in, clips and seconds kept, the yield (kept / input seconds), and what was dropped
-- (stage/reason: count, e.g. "dedup/duplicate: 2, clips/too_few_frames: 1"); one row per run and source.
WITH dropped AS (
    SELECT run, source_uri, string_agg(stage || '/' || reason || ': ' || n, ', ' ORDER BY n DESC, stage, reason) AS why,
           sum(n) AS n
    FROM (SELECT run, source_uri, stage, reason, count(*) AS n FROM rejected GROUP BY ALL)
    GROUP BY run, source_uri
)
SELECT
    v.source_uri,
    v.decoder,
    round(v.duration_s, 2) AS duration_s,
    count(c.clip_id) AS clips,
    round(coalesce(sum(c.end_s - c.start_s), 0), 2) AS clip_seconds,
    round(coalesce(sum(c.end_s - c.start_s), 0) / nullif(v.duration_s, 0), 3) AS yield,
    coalesce(any_value(d.n), 0) AS rejected,
    any_value(d.why) AS dropped,
    v.run
FROM videos AS v
LEFT JOIN clips AS c ON c.run = v.run AND c.video_id = v.video_id
LEFT JOIN dropped AS d ON d.run = v.run AND d.source_uri = v.source_uri
GROUP BY v.run, v.source_uri, v.decoder, v.duration_s
ORDER BY v.run, v.source_uri;
