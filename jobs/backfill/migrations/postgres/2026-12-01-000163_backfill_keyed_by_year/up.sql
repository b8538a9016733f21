-- backfill_log's keys include year, so that the queue can be distributed by year on Citus
-- (docs/citus.md), which refuses a primary key without the distribution column. The id stays
-- the claim order and, with year, the claim's identity; it leads the key so that the claim's
-- `id = ANY(…)` still finds its rows through it. (UNIQUE (year, month) includes year already.)
ALTER TABLE backfill_log DROP CONSTRAINT backfill_log_pkey;
ALTER TABLE backfill_log ADD CONSTRAINT backfill_log_pkey PRIMARY KEY (id, year);
