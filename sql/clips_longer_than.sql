-- Clips at least $min_seconds long (parameterised example: --param min_seconds=2).
SELECT clip_id, source_uri, start_frame, end_frame, round(end_s - start_s, 3) AS seconds
FROM clips
WHERE end_s - start_s >= $min_seconds
ORDER BY seconds DESC, clip_id;
