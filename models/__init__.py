"""Method plugins shipped with tbps-bench: one folder per method."""
