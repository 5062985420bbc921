-- Curated clips per bucket ("TxHxW", curation.buckets): clips, seconds, sources, and the mean and worst crop; with
-- each bucket's share of the run's clips. One row per run and bucket, largest first.
SELECT
    bucket,
    any_value(num_frames) AS num_frames,
    any_value(frame_height) AS frame_height,
    any_value(frame_width) AS frame_width,
    count(*) AS clips,
    round(sum(end_s - start_s), 2) AS clip_seconds,
    count(DISTINCT video_id) AS sources,
    round(avg(crop_fraction), 4) AS mean_crop_fraction,
    round(max(crop_fraction), 4) AS max_crop_fraction,
    round(count(*) / sum(count(*)) OVER (PARTITION BY run), 4) AS share,
    run
FROM clips
GROUP BY run, bucket
ORDER BY run, clips DESC, bucket;
