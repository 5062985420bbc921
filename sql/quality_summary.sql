-- Appearance scores per source video: mean classical quality (sharpness, brightness, contrast, colourfulness,
-- clipped shares), the aesthetic score where a model ran, and how many clips carry a caption. Low sharpness or
-- brightness here is where to look before setting [filters.min] thresholds.
SELECT
    source_uri,
    count(*) AS clips,
    round(avg(sharpness), 2) AS sharpness,
    round(avg(brightness), 3) AS brightness,
    round(avg(contrast), 3) AS contrast,
    round(avg(colorfulness), 1) AS colorfulness,
    round(max(clipped_dark), 3) AS max_clipped_dark,
    round(max(clipped_bright), 3) AS max_clipped_bright,
    round(avg(aesthetic_score), 3) AS aesthetic_score,
    count(caption) AS captioned
FROM clips
GROUP BY source_uri
ORDER BY sharpness;
