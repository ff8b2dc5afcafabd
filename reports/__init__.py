"""Reports built from MLflow: the run report card, cross-run comparisons, seed spreads, plots."""
