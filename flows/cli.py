"""`gptflow` command line: run the pipeline, inspect its stages, report, open the MLflow UI.

Heavy imports (Prefect, MLflow, torch) happen inside the commands, after the workspace has set
the environment, so errors in the config are reported at once and before any compute.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.config_command import add_config_options, add_config_parser, cmd_config
from flows.gc_command import add_gc_parser, cmd_gc
from flows.process_gc import imports_without_gc, one_shot_process
from flows.servers.command import add_servers_parser, cmd_servers
from flows.workspace import Workspace

if TYPE_CHECKING:
    from flows.api_server import ApiServer
    from tasks.content import DigestCache
from gpt.config.experiment import ExperimentConfig
from gpt.config.loader import load_config
from gpt.config.secrets import install_log_redaction, redact_url, scrub_exception


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _seeds(value: str) -> list[int]:
    try:
        seeds = [int(v) for v in _csv(value)]
    except ValueError:
        seeds = []
    if not seeds:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,3, got {value!r}")
    return seeds


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gptflow", description="GPT pretrain-then-finetune pipelines")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        add_config_options(sp)
        sp.add_argument("--workspace", help="workspace directory (default: $GPTFLOW_HOME or ./workspace)")
        sp.add_argument(
            "--seeds", type=_seeds, help="fine-tune and evaluate every task once per seed, e.g. 1,2,3 (finetune.seeds)"
        )

    def selection(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--only", type=_csv, help="run only these stages, e.g. finetune,evaluate")
        sp.add_argument("--from", dest="from_stage", help="recompute this stage and everything after it")
        sp.add_argument("--force", type=_csv, help="recompute these stages and everything downstream of them")
        sp.add_argument(
            "--rebuild",
            type=_csv,
            help="recompute just these stages (e.g. a corrupt one); later stages are reused if it comes out the same",
        )

    def store_option(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--store",
            help="shared copy of finished stages and MLflow artifacts: an fsspec URL such as file:///shared/dir "
            "or s3://bucket/prefix (default: $GPTFLOW_STORE; none)",
        )

    run = sub.add_parser("run", help="run the pipeline (finished stages are reused from cache)")
    common(run)
    selection(run)
    run.add_argument("--experiment", help="MLflow experiment name (overrides the config's `experiment`)")
    store_option(run)
    run.add_argument(
        "--until-decided",
        action="store_true",
        help="rerun adding fine-tuning seeds (reusing every finished stage) until every claim in `claims:` is decided",
    )
    run.add_argument(
        "--max-seeds",
        type=int,
        metavar="N",
        help="with --until-decided: stop at N seeds even if a claim is undecided (default 10, GPT-1's runs per result)",
    )

    stages = sub.add_parser("stages", help="dry run: each stage's key, status and why (starts nothing)")
    common(stages)
    selection(stages)
    stages.add_argument("--verify", action="store_true", help="also re-hash finished stages' files (sha256)")
    stages.add_argument("--sweep", action="store_true", help="per sweep trial: stages it computes, shares, reuses")
    stages.add_argument("--grid", action="append", metavar="KEY=V1,V2", help="with --sweep: a swept key (repeatable)")

    sweep = sub.add_parser("sweep", help="run one pipeline per trial of the config's sweep; trials share stages")
    common(sweep)
    sweep.add_argument(
        "--grid", action="append", metavar="KEY=V1,V2", help="sweep this key over these values (repeatable)"
    )
    sweep.add_argument("--experiment", help="MLflow experiment name (overrides the config's `experiment`)")
    store_option(sweep)

    serve = sub.add_parser("serve", help="serve the pipeline as a Prefect deployment on a cron schedule")
    common(serve)
    selection(serve)
    serve.add_argument("--cron", required=True, help='schedule, e.g. "0 3 * * *" (03:00 daily)')
    serve.add_argument("--name", help="deployment name (default: gptflow-<experiment>)")
    serve.add_argument(
        "--pool",
        help="deploy to this process work pool on the Prefect server (PREFECT_API_URL) and exit; "
        "`prefect worker start --pool NAME` runs the scheduled runs (default: serve them from this process)",
    )
    store_option(serve)

    report = sub.add_parser("report", help="write the report card of a pipeline run (report.html, report.md, plots)")
    report.add_argument("run_id")
    report.add_argument("--out", default=".", help="directory for report.html, report.md and plots/")
    report.add_argument("--workspace")

    compare = sub.add_parser("compare", help="compare pipeline runs: differing config keys, final metrics, plots")
    compare.add_argument("--experiment", help="MLflow experiment (default: finished runs of all experiments)")
    compare.add_argument("--runs", nargs="+", metavar="RUN_ID", help="compare exactly these pipeline runs")
    compare.add_argument("--sweep", metavar="ID", help="the trials of this sweep (its id is printed by gptflow sweep)")
    compare.add_argument("--out", help="output file (default: compare.html; csv and md go to standard output)")
    compare.add_argument("--format", choices=("html", "csv", "md"), help="default: from --out's suffix, else html")
    compare.add_argument("--workspace")

    predict = sub.add_parser("predict", help="classify text with a fine-tuned model (e.g. models:/NAME@best)")
    predict.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or a task_model dir")
    predict.add_argument("--task", required=True, help="the task the model was fine-tuned on (label names)")
    predict.add_argument("--text", action="append", required=True, help="input text; repeat for each field")
    predict.add_argument("--workspace")

    gen = sub.add_parser("generate", help="sample a continuation of a prompt from a pretrained model (streamed)")
    gen.add_argument(
        "--model",
        required=True,
        help="model dir, pretrain stage dir, MLflow run id (pipeline/stage), or models:/NAME@ALIAS from the registry",
    )
    gen.add_argument("--prompt", required=True, help="text to continue")
    gen.add_argument("--max-new-tokens", type=int, default=100)
    gen.add_argument("--temperature", type=float, default=0.8, help="0 means greedy")
    gen.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
    gen.add_argument("--top-p", type=float, help="sample among the most likely tokens holding this probability")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--tokenizer", help="tokenizer dir, when the model dir has no tokenizer files (imported models)")
    gen.add_argument("--workspace")

    imp = sub.add_parser("import-hf", help="convert a Hugging Face openai-gpt/gpt2 checkpoint dir to a model dir")
    imp.add_argument("src", help="directory written by save_pretrained (config.json + weights)")
    imp.add_argument("out", help="gptflow model directory to write")
    imp.add_argument("--workspace")

    exp = sub.add_parser("export-hf", help="convert a gptflow model to a Hugging Face openai-gpt/gpt2 checkpoint dir")
    exp.add_argument("model", help="model dir, pretrain stage dir, or MLflow run id")
    exp.add_argument("out", help="directory to write (config.json + model.safetensors)")
    exp.add_argument("--workspace")

    ui = sub.add_parser("ui", help="MLflow UI on 127.0.0.1 over the workspace's store")
    ui.add_argument("--workspace")
    ui.add_argument("--port", type=int, default=5000)
    add_gc_parser(sub)
    add_config_parser(sub)
    add_servers_parser(sub)
    return p


def _load(args: argparse.Namespace, ws: Workspace) -> ExperimentConfig:
    overrides = list(args.overrides)
    if getattr(args, "experiment", None):
        overrides.append(f"experiment={args.experiment}")
    if getattr(args, "seeds", None):
        overrides.append(f"finetune.seeds={args.seeds}")
    return resolve_weight_refs(load_config(args.config, overrides), ws)


def resolve_weight_refs(cfg: ExperimentConfig, ws: Workspace) -> ExperimentConfig:
    """`pretrain.init_from` (a run id or models:/NAME@ALIAS) as the model directory it names in `ws`, and
    `pretrain.resume_from` (a run id) as its pretrain stage directory."""
    from dataclasses import replace

    from flows.model_ref import resolve_model_dir
    from tasks.pretrain_job import MODEL_DIR

    def resolved(ref: str | None, field: str) -> str | None:
        if ref is None or Path(ref).expanduser().exists():
            return ref
        model_dir = resolve_model_dir(ref, ws, key=f"config key 'pretrain.{field}'")
        return str(model_dir.parent if field == "resume_from" and model_dir.name == MODEL_DIR else model_dir)

    p = cfg.pretrain
    p = replace(p, init_from=resolved(p.init_from, "init_from"), resume_from=resolved(p.resume_from, "resume_from"))
    return replace(cfg, pretrain=p)


def cmd_run(args: argparse.Namespace, ws: Workspace) -> int:
    """Validate everything cheap first, then start the Prefect flow on a temporary API tied to this process.

    With --until-decided: rounds of runs adding fine-tuning seeds until every claim is decided (flows/until_decided.py).
    """
    cfg = _load(args, ws)
    if args.until_decided or args.max_seeds is not None:
        from flows.until_decided import Round, until_decided

        return until_decided(cfg, args, ws, Round(check_run, run_once, print_ending))
    from flows.api_server import launched_api

    with launched_api() as server:  # the temporary Prefect API boots while the run is checked and planned
        check_run(cfg, args, ws)
        result = run_once(cfg, args, ws, server)
    print_ending(cfg, ws, result)
    return 0


def check_run(cfg: ExperimentConfig, args: argparse.Namespace, ws: Workspace) -> None:
    """What `run` checks before any compute: inputs, the stage selection, corpus size, workspace and stores."""
    from tasks.content import DigestCache
    from tasks.plan import build_plan, check_corpus_fits, check_inputs, check_stages, select

    check_inputs(cfg)
    digests = DigestCache(ws.digests)
    plan = build_plan(cfg, ws.artifacts, digests=digests)
    _report_hashing(digests)
    selected, forced = select(plan, args.only, args.from_stage, args.force, args.rebuild)
    check_corpus_fits(cfg, selected)
    check_stages(plan, selected, forced)
    ws.check_writable()
    ws.check_tracking()
    ws.check_store()


def run_once(
    cfg: ExperimentConfig, args: argparse.Namespace, ws: Workspace, server: ApiServer | None = None
) -> dict[str, Any]:
    """One pipeline run of `cfg` with `args`' stage selection, on a temporary Prefect API unless one is up.

    `server`: a temporary API launched earlier (flows.api_server.launched_api); else one is started here.
    Returns the flow's result (`run_id`, `stages`, `artifacts`); a bad input raises StageError with its one line.
    """
    with imports_without_gc():  # Prefect, MLflow, pandas, matplotlib: ~25% faster without collections
        from flows.api_server import prefect_api
        from flows.pipeline import run_pipeline
    from tasks.child_process import interrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        with prefect_api(server):
            return run_pipeline(
                cfg.to_dict(),
                str(ws.root),
                only=args.only,
                from_stage=args.from_stage,
                force=args.force,
                rebuild=args.rebuild,
                config_file=str(Path(args.config).resolve()) if args.config else None,
            )
    finally:
        signal.signal(signal.SIGTERM, previous)


def print_ending(cfg: ExperimentConfig, ws: Workspace, result: dict[str, Any]) -> None:
    """What every run ends with: the MLflow run, each stage's outcome, then its results read back from MLflow."""
    print(f"\nMLflow run {result['run_id']} (experiment '{cfg.experiment}', store {redact_url(ws.tracking_uri)})")
    for name, outcome in result["stages"].items():
        print(f"  {name:<24} {outcome}")
    ui = f"at {redact_url(ws.tracking_uri)}" if _served(ws) else f"with: gptflow ui --workspace {ws.root}"
    print(f"artifacts: {result['artifacts']}\nopen the UI {ui}")
    from mlflow.exceptions import MlflowException

    from reports.headline import headline

    try:  # the run is done and recorded: reading its figures back must not turn it into a failure
        lines = headline(ws.tracking_uri, result["run_id"], Path(result["artifacts"]))
    except (MlflowException, OSError) as e:
        lines = [f"(figures not read back from MLflow: {e})"]
    print("\nresults:")
    for line in lines:
        print(f"  {line}")


def _report_hashing(digests: DigestCache) -> None:
    """One line on what keying local inputs by content cost (nothing when there are none)."""
    s = digests.stats
    if s.files:
        print(
            f"local inputs: {s.files} files keyed by content in {s.seconds:.2f} s "
            f"({s.hashed_files} read, {s.hashed_bytes / 1e6:.1f} MB; {s.remembered_files} remembered unchanged)",
            file=sys.stderr,
        )


def cmd_stages(args: argparse.Namespace, ws: Workspace) -> int:
    """Print what `run` would do: stage, key, status and why; reads the workspace, starts nothing."""
    from tasks.plan import build_plan, describe, select

    cfg = _load(args, ws)
    if args.sweep or args.grid:
        from flows.sweep.command import cmd_stages_sweep

        return cmd_stages_sweep(cfg, args, ws)
    plan = build_plan(cfg, ws.artifacts)
    selected, forced = select(plan, args.only, args.from_stage, args.force, args.rebuild)
    for row in describe(plan, selected, forced, deep=args.verify):
        print(f"{row['stage']:<24} {row['key']}  {row['status']:<8} {row['why']}")
    print(f"artifacts: {ws.artifacts}")
    return 0


def cmd_sweep(args: argparse.Namespace, ws: Workspace) -> int:
    """Run the config's sweep (plus --grid keys): one pipeline run per trial, then the table and the best trial."""
    from flows.sweep.command import cmd_sweep as run_sweep

    return run_sweep(_load(args, ws), args, ws)


def cmd_serve(args: argparse.Namespace, ws: Workspace) -> int:
    """Validate the config like `run`, then serve the scheduled deployment until interrupted."""
    from flows.serve import check_cron, deploy, serve
    from tasks.plan import build_plan, check_corpus_fits, check_inputs, select

    cfg = _load(args, ws)
    check_cron(args.cron)
    check_inputs(cfg)
    selected, _ = select(build_plan(cfg, ws.artifacts), args.only, args.from_stage, args.force, args.rebuild)
    check_corpus_fits(cfg, selected)
    ws.check_writable()
    ws.check_tracking()
    ws.check_store()
    selection = {"only": args.only, "from_stage": args.from_stage, "force": args.force, "rebuild": args.rebuild}
    if args.pool:
        deploy(cfg, ws, args.cron, args.name, selection, args.pool)
    else:
        serve(cfg, ws, args.cron, args.name, selection)
    return 0


def cmd_report(args: argparse.Namespace, ws: Workspace) -> int:
    """Rebuild the report card of a run from MLflow: report.html (self-contained), report.md, plots/."""
    from mlflow.tracking import MlflowClient

    from reports.run_report import build_report

    ws.check_tracking()
    files = build_report(MlflowClient(ws.tracking_uri), args.run_id, Path(args.out))
    print(f"{files.html}\n{files.markdown}")
    return 0


def cmd_compare(args: argparse.Namespace, ws: Workspace) -> int:
    """Compare pipeline runs (mlflow.search_runs + pandas) as an HTML page, Markdown or CSV."""
    from mlflow.tracking import MlflowClient

    from reports.compare import comparison_table, comparison_text, pipeline_runs, write_comparison

    suffix = Path(args.out).suffix.lstrip(".") if args.out else ""
    fmt = args.format or (suffix if suffix in ("html", "csv", "md") else "html")
    ws.check_tracking()
    if args.sweep:
        return _compare_sweep(args, ws, fmt)
    table = comparison_table(pipeline_runs(ws.tracking_uri, args.experiment, args.runs))
    if fmt in ("csv", "md") and not args.out:  # text pipes into pandas, `column` or a notebook
        sys.stdout.write(comparison_text(table, fmt))
        return 0
    out = write_comparison(table, MlflowClient(ws.tracking_uri), Path(args.out or f"compare.{fmt}"), fmt)
    print(out)
    return 0


def _compare_sweep(args: argparse.Namespace, ws: Workspace, fmt: str) -> int:
    """A sweep's trials: the table, the metric against each swept key, parallel coordinates."""
    import tempfile

    from mlflow.tracking import MlflowClient

    from reports.sweep_compare import latest_sweep_run, sweep_table, sweep_text, write_sweep_comparison

    client = MlflowClient(ws.tracking_uri)
    with tempfile.TemporaryDirectory() as scratch:
        table = sweep_table(client, latest_sweep_run(client, args.sweep), Path(scratch))
    if fmt in ("csv", "md") and not args.out:
        sys.stdout.write(sweep_text(table, fmt))
        return 0
    print(write_sweep_comparison(table, Path(args.out or f"compare.{fmt}"), fmt))
    return 0


def cmd_predict(args: argparse.Namespace, ws: Workspace) -> int:
    """Classify one input with a fine-tuned model from the registry (or a task_model directory)."""
    from tasks.registry import predict_text

    result = predict_text(args.model, args.task, args.text, ws.tracking_uri)
    probs = ", ".join(f"{name}={p:.3f}" for name, p in result["probabilities"].items())
    print(f"{result['label']}\t({probs})")
    return 0


def cmd_generate(args: argparse.Namespace, ws: Workspace) -> int:
    """Stream a sampled continuation of --prompt to stdout, token by token."""
    from flows.model_commands import generate_command

    return generate_command(args, ws, sys.stdout)


def cmd_import_hf(args: argparse.Namespace, ws: Workspace) -> int:
    """HF checkpoint dir -> gptflow model dir."""
    from flows.model_commands import import_hf_command

    return import_hf_command(args)


def cmd_export_hf(args: argparse.Namespace, ws: Workspace) -> int:
    """gptflow model (dir or run id) -> HF checkpoint dir."""
    from flows.model_commands import export_hf_command

    return export_hf_command(args, ws)


def _served(ws: Workspace) -> bool:
    """Whether the tracking store is an MLflow server (MLFLOW_TRACKING_URI=http...), which serves the UI itself."""
    return ws.tracking_uri.startswith(("http://", "https://"))


def cmd_ui(args: argparse.Namespace, ws: Workspace) -> int:
    """Replace this process with `mlflow ui` bound to 127.0.0.1 (with a tracking server: say where its UI is).

    Sized for one person browsing one workspace: one uvicorn worker and no job runner (MLflow's defaults,
    4 workers, a job runner and 7 job consumers for GenAI scorers, are 14 processes and ~3 GB resident).
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true in the environment turns the job runner back on.
    """
    if _served(ws):
        print(f"MLflow UI at {redact_url(ws.tracking_uri)} (the tracking server MLFLOW_TRACKING_URI names serves it)")
        return 0
    url = f"http://127.0.0.1:{args.port}"
    print(f"MLflow UI at {url} (store {redact_url(ws.tracking_uri)})", flush=True)
    mlflow = Path(sys.executable).with_name("mlflow")
    argv = [str(mlflow), "ui", "--backend-store-uri", ws.tracking_uri, "--host", "127.0.0.1", "--port", str(args.port)]
    argv += ["--workers", "1"]
    if ws.artifact_location:
        argv += ["--default-artifact-root", ws.artifact_location]
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.execv(argv[0], argv)
    return 0  # not reached


COMMANDS = {
    "gc": cmd_gc,
    "run": cmd_run,
    "stages": cmd_stages,
    "sweep": cmd_sweep,
    "serve": cmd_serve,
    "report": cmd_report,
    "compare": cmd_compare,
    "predict": cmd_predict,
    "generate": cmd_generate,
    "import-hf": cmd_import_hf,
    "export-hf": cmd_export_hf,
    "ui": cmd_ui,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point; config and input errors exit with code 2 and one line, no traceback."""
    from tasks.remote_store import STORE_ENV, normalize_url
    from tasks.stage import user_error

    args = _parser().parse_args(argv)
    if argv is None:  # the process's own command line (`gptflow`, `python -m flows.cli`): it exits after this
        one_shot_process()  # no final garbage collection at exit (flows/process_gc.py)
    install_log_redaction()  # no credential in a URL reaches a log line (gpt/config/secrets.py)
    if args.command == "config":  # no workspace, no torch or tiktoken: answers at once
        return cmd_config(args)
    if args.command == "servers":  # the team stack: no workspace
        return cmd_servers(args)
    try:
        if getattr(args, "store", None):  # the stage tasks and the flow read it from the environment
            os.environ[STORE_ENV] = normalize_url(args.store)
        ws = Workspace.resolve(args.workspace)
        ws.check_directory(args.workspace)  # every command: a file in the way fails here, not deep inside
        ws.configure_environment()
        return COMMANDS[args.command](args, ws)
    except KeyboardInterrupt as e:
        print(f"gptflow: interrupted ({e or 'SIGINT'}); rerun the same command to continue", file=sys.stderr)
        return 130
    except Exception as e:
        message = user_error(e)
        if message is None:
            scrub_exception(e)  # its traceback ends with its message
            raise  # a bug: keep the traceback
        print(f"gptflow: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
