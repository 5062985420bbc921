-- Near-duplicate groups found by the dedup stage: each dropped clip beside the clip kept in its place (the best of
-- the group: aesthetic score, then source resolution, duration, sharpness) and the evidence (key-frame hash
-- distance in bits of 64, and/or embedding cosine). Re-tune with --set dedup.hash_distance=... and rerun.
SELECT
    k.clip_id AS kept_clip_id,
    k.source_uri AS kept_source_uri,
    k.start_frame AS kept_start_frame,
    k.end_frame AS kept_end_frame,
    r.clip_id AS dropped_clip_id,
    r.source_uri AS dropped_source_uri,
    r.start_frame AS dropped_start_frame,
    r.end_frame AS dropped_end_frame,
    split_part(r.detail, '; ', 2) AS evidence,
    r.run
FROM rejected AS r
JOIN clips AS k ON k.run = r.run AND k.clip_id = split_part(r.detail, ' ', 1)
WHERE r.stage = 'dedup' AND r.reason = 'duplicate'
ORDER BY r.run, kept_source_uri, kept_start_frame, dropped_source_uri;
