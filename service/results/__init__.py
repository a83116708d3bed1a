"""Results: groups over seeds, statistics, rule checks, leaderboard, records/ export."""
