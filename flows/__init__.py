"""Prefect flows and the command line: the pipeline flow, fan-out, the CLI and its commands, the workspace."""
