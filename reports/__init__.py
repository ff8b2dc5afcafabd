"""Reports built from MLflow: the run report card, cross-run comparisons, seed spreads, plots."""

# The report card's files, in a stage directory and on the parent MLflow run.
MD_FILE, HTML_FILE, PLOTS_DIR = "report.md", "report.html", "plots"
