"""Reading many runs: the results table and its plot (summary), rankings and paired effects (ranking),
learning curves (curve), statistics (stats)."""
