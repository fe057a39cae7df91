"""Leaderboards: result files in, deterministic markdown and CMC plots out."""

from tbps_bench.leaderboard.build import build_leaderboards

__all__ = ["build_leaderboards"]
