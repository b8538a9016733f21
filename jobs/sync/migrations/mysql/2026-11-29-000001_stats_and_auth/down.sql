DROP TABLE wakatime_auth;
DROP TABLE strava_auth;
DROP TABLE wakatime_stats;
DROP TABLE strava_stats;
