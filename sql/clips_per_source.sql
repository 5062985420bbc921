-- Clips and seconds kept per source video, with what was dropped.
SELECT
    v.source_uri,
    v.decoder,
    round(v.duration_s, 2) AS duration_s,
    count(c.clip_id) AS clips,
    round(coalesce(sum(c.end_s - c.start_s), 0), 2) AS clip_seconds,
    (SELECT count(*) FROM rejected r WHERE r.source_uri = v.source_uri) AS rejected
FROM videos v
LEFT JOIN clips c USING (video_id)
GROUP BY ALL
ORDER BY v.source_uri;
