DROP TABLE usage_reservations;
DROP TABLE usage_events;
DROP TABLE usage_periods;
DROP TABLE usage_accounts;
