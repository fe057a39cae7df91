"""``precomputed``: any method on the leaderboard from its saved scores or embeddings."""
