-- Clip-level QCM tokens as a 9x9 table: one row per key state (all 9, convention order, zero rows kept), one
-- column per mouse state (convention order), and the row total. Decodes qcm_token = key_index * 9 + mouse_index.
WITH key_states(key_index, key_state) AS (
    VALUES (0, 'none'), (1, 'W'), (2, 'S'), (3, 'A'), (4, 'D'), (5, 'W+A'), (6, 'W+D'), (7, 'S+A'), (8, 'S+D')
),
tokens AS (
    SELECT qcm_token // 9 AS key_index, qcm_token % 9 AS mouse_index
    FROM clips
    WHERE qcm_token BETWEEN 0 AND 80
)
SELECT
    k.key_state AS keys,
    count(*) FILTER (WHERE t.mouse_index = 0) AS mouse_none,
    count(*) FILTER (WHERE t.mouse_index = 1) AS turn_right,
    count(*) FILTER (WHERE t.mouse_index = 2) AS turn_left,
    count(*) FILTER (WHERE t.mouse_index = 3) AS tilt_up,
    count(*) FILTER (WHERE t.mouse_index = 4) AS tilt_down,
    count(*) FILTER (WHERE t.mouse_index = 5) AS up_right,
    count(*) FILTER (WHERE t.mouse_index = 6) AS up_left,
    count(*) FILTER (WHERE t.mouse_index = 7) AS down_right,
    count(*) FILTER (WHERE t.mouse_index = 8) AS down_left,
    count(t.mouse_index) AS total
FROM key_states k
LEFT JOIN tokens t USING (key_index)
GROUP BY k.key_index, k.key_state
ORDER BY k.key_index;
