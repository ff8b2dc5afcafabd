"""`gptflow servers`: the team stack on one machine, PostgreSQL + MLflow server + Prefect server.

procs.py: detached processes and their identity (pid + start time, so a reused pid is never
signalled); postgres.py, mlflow_server.py, prefect_server.py: one server each; stack.py: `up`,
`down` and `status` over DIR/servers.json; command.py: the command line.
"""
