-- Clips ranked by EVD event score (camera-compensated localized change, frame diagonals per second), with their
-- confidence, spread and main active window in source frames; diffuse (camera-dominated) clips are flagged.
SELECT
    clip_id,
    source_uri,
    round(event_score, 5) AS event_score,
    round(event_confidence, 3) AS confidence,
    round(event_entropy, 3) AS entropy,
    event_diffuse AS diffuse,
    event_start_frame,
    event_end_frame,
    round(percent_rank() OVER (ORDER BY event_score), 3) AS score_rank
FROM clips
WHERE event_score IS NOT NULL
ORDER BY event_score DESC;
