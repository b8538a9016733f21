DROP TABLE backfill_log;
