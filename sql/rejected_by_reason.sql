-- How many inputs and clips each stage dropped, and why.
SELECT stage, reason, count(*) AS n, count(DISTINCT source_uri) AS sources, any_value(detail) AS example
FROM rejected
GROUP BY stage, reason
ORDER BY n DESC, stage, reason;
