"""Pretraining throughput of gptflow against nanoGPT and litgpt, side by side, on the same work.

Each contender trains from its own code, in its own process, on the same tokens: tiny Shakespeare
(the mirror's `tinyshakespeare/input.txt`) encoded once by gptflow's encode path into `train.bin` /
`val.bin` (uint16), which nanoGPT and litgpt read as they are. Nothing of the peers is copied into
gptflow: nanoGPT's `train.py` runs from its checkout, litgpt's `pretrain.setup` from its own venv.

    gptflow  benchmarks/peers_gptflow.py: the real `gpt.train.pretrain.pretrain` (Lightning Trainer and
             its callbacks, the MLflow stage logger on a temporary SQLite store)
    nanoGPT  `python train.py --device=cpu --compile=False --dtype=float32 ...` in a run directory whose
             `data/<dataset>/` links to the shards; its own `iter N: ... time Xms` lines are parsed
    litgpt   benchmarks/peers_litgpt.py: `litgpt.pretrain.setup` (Fabric, "32-true") with a
             `litgpt.data.DataModule` serving random windows of the same `train.bin`

Rounds cycle through the contenders (gptflow, nanoGPT, litgpt, gptflow, ...). A step's time is the
wall time between the ends of two consecutive optimizer steps, everything of the training loop
inside it (batch, forward, backward, clipping, optimizer step, the contender's own logging):
nanoGPT prints exactly that (`time Xms`); for gptflow and litgpt a global torch optimizer step
post-hook records the same instants. Steps `--warmup` .. `--steps`-1 are timed: ms/step is their
mean, tokens/s = batch x block / mean. Every contender gets OMP_NUM_THREADS = MKL_NUM_THREADS =
`--threads` (2). Ratios are gptflow tokens/s over the peer's (above 1: gptflow is faster).

Presets: `nanogpt` is the nanoGPT-style config (GPT-2 BPE, vocab 50257 padded to 50304, 4 layers x
256, 4 heads, block 256, batch 8, dropout 0, pre-LN, tied embeddings, biases, fp32); `demo` takes
configs/demo.yaml's model and pretrain sections (block 128, batch 16, dropout 0.1) with a 4096-rank
BPE that gptflow trains on the same text (vocab 4100 with gptflow's four special tokens, unpadded).

Setup (once; the peers live outside the repository, in /work/peers):

    mkdir -p /work/peers/nanoGPT
    git --git-dir=/work/.mirror/karpathy+nanoGPT/repo archive HEAD | tar -x -C /work/peers/nanoGPT
    python3 -m venv /work/peers/litgpt-venv
    /work/peers/litgpt-venv/bin/pip install torch==2.13.0     # first, alone: the CPU wheel, no CUDA
    /work/peers/litgpt-venv/bin/pip install litgpt requests   # requests: litgpt's final checkpoint save needs it

Run:

    .venv/bin/python benchmarks/peers.py                      # preset nanogpt, 3 rounds of 40 steps
    .venv/bin/python benchmarks/peers.py --preset demo --rounds 1
    .venv/bin/python benchmarks/peers.py --skip litgpt --nanogpt /path/to/nanoGPT

Where the contenders cannot be identical (printed as notes): litgpt's GPT has no learned absolute
positions (RoPE on `--litgpt-rotary` of each head, 0.25 as in Pythia), no dropout, AdamW without
decay groups, and litgpt's pretrain always wraps the model in torch.compile (disabled here with
TORCHDYNAMO_DISABLE=1 unless `--litgpt-compile`); nanoGPT and litgpt take the cross-entropy over
the padded vocabulary, gptflow over the real one.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
CONTENDERS = ("gptflow", "nanoGPT", "litgpt")
PEERS = ("nanogpt", "litgpt")
NANOGPT_ITER = re.compile(r"^iter (\d+): loss [-\w.]+, time ([\d.]+)ms", re.MULTILINE)
DATASET = "gptflow_peers"


class StepClock:
    """`time.perf_counter()` at the end of every optimizer step, from a global torch post-hook.

    Framework-agnostic: it fires inside `Optimizer.step` whoever calls it (Lightning, Fabric, a
    plain loop), so gptflow and litgpt are clocked by the same code.
    """

    def __init__(self) -> None:
        self.ends: list[float] = []
        self._handle: Any = None

    def install(self) -> StepClock:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handle = register_optimizer_step_post_hook(lambda *_: self.ends.append(time.perf_counter()))
        return self

    def write(self, path: str | Path, **extra: Any) -> None:
        import torch

        Path(path).write_text(json.dumps({"step_ends": self.ends, "threads": torch.get_num_threads(), **extra}))


@dataclass
class Work:
    """What every contender trains: the model shape, the batch, the optimizer settings, the data."""

    preset: str
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int
    dropout: float
    vocab_size: int
    padded_vocab_size: int
    lr: float
    warmup_steps: int
    weight_decay: float
    grad_clip: float
    steps: int
    shard_dir: str
    gptflow_model: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields
    gptflow_pretrain: dict[str, Any] = field(default_factory=dict)  # PretrainConfig fields


@dataclass
class Round:
    """One contender's run: per-step seconds of the timed steps, or why it has none."""

    contender: str
    step_seconds: list[float]
    threads: int | None = None
    error: str | None = None

    def ms_per_step(self) -> float:
        return 1000 * statistics.fmean(self.step_seconds)

    def tokens_per_s(self, tokens_per_step: int) -> float:
        return tokens_per_step / statistics.fmean(self.step_seconds)


def prepare(preset: str, steps: int, out: Path, seed: int = 1234) -> Work:
    """Encode tiny Shakespeare into gptflow shards and describe the work for this preset."""
    sys.path.insert(0, str(REPO))
    from tiktoken.load import load_tiktoken_bpe

    from gpt.config.loader import load_config
    from gpt.data.shards import encode_corpus
    from gpt.data.sources import CATALOG, fetch, mirror_dir
    from gpt.data.tokenizer import GPT2_PATTERN, SPLIT_PATTERN, build_encoding, train_bpe
    from gpt.model.config import ModelConfig
    from gpt.train.config import PretrainConfig

    mirror = mirror_dir()
    text_file = mirror / "tinyshakespeare" / "input.txt" if mirror else None
    if text_file is None or not text_file.is_file():
        raise SystemExit(f"peers: tiny Shakespeare not found at {text_file} (set GPTFLOW_MIRROR to the data mirror)")
    text = text_file.read_text(encoding="utf-8")
    shard_dir = out / "shards"
    shard_dir.mkdir(parents=True)
    (out / "corpus.jsonl").write_text(json.dumps({"text": text}) + "\n")
    if preset == "nanogpt":
        (ranks_remote,) = CATALOG["gpt2_bpe"]
        enc = build_encoding(load_tiktoken_bpe(str(fetch(ranks_remote, out / "cache"))), GPT2_PATTERN, name="gpt2")
        model = ModelConfig(n_layer=4, n_head=4, n_embd=256, block_size=256, dropout=0.0, norm="pre", pad_vocab_to=64)
        model = model.with_vocab(50257)  # GPT-2's vocabulary; gptflow's special tokens never occur in the text
        train = PretrainConfig(batch_size=8, precision="32-true", compile=False)
    else:
        cfg = load_config(REPO / "configs" / "demo.yaml")
        enc = build_encoding(train_bpe([text], cfg.tokenizer.vocab_size), SPLIT_PATTERN)
        model = cfg.model.with_vocab(enc.n_vocab)
        train = replace(cfg.pretrain, precision="32-true", compile=False)
    # 90/10 as nanoGPT's shakespeare prepare.py; one document, so the cut is at a paragraph break.
    encode_corpus(out / "corpus.jsonl", enc, shard_dir, val_fraction=0.1, seed=seed, workers=1)
    never = steps + 1  # no validation or checkpoint inside the run
    warmup = min(train.warmup_steps, steps - 1)  # the lr schedule is given to every contender alike
    train = replace(train, max_steps=steps, warmup_steps=warmup, val_every=never, ckpt_every=never, val_batches=1)
    return Work(
        preset=preset,
        n_layer=model.n_layer,
        n_head=model.n_head,
        n_embd=model.n_embd,
        block_size=model.block_size,
        batch_size=train.batch_size,
        dropout=model.dropout,
        vocab_size=model.vocab_size or enc.n_vocab,
        padded_vocab_size=model.padded_vocab_size,
        lr=train.lr,
        warmup_steps=warmup,
        weight_decay=train.weight_decay,
        grad_clip=train.grad_clip,
        steps=steps,
        shard_dir=str(shard_dir),
        gptflow_model=asdict(model),
        gptflow_pretrain=asdict(train),
    )


def contender_env(threads: int, **extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


def run_logged(cmd: list[str], cwd: Path, env: dict[str, str], log: Path, timeout: float) -> str | None:
    """Run `cmd`, its output into `log`; None when it succeeded, else the reason with the log's tail."""
    with open(log, "w") as f:
        try:
            proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"timed out after {timeout:.0f} s (log: {log})"
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        return f"exit code {proc.returncode} (log: {log}):\n{tail}"
    return None


def step_seconds_from_ends(ends: list[float], steps: int, warmup: int) -> list[float]:
    """Seconds of steps warmup .. steps-1 from the end times of steps 0 .. steps-1."""
    if len(ends) != steps:
        raise ValueError(f"recorded {len(ends)} optimizer steps, expected {steps}")
    return [b - a for a, b in zip(ends[warmup - 1 : -1], ends[warmup:], strict=True)]


def run_hooked(
    name: str, python: str, extra: list[str], work_dir: Path, env: dict[str, str], args: argparse.Namespace
) -> Round:
    """`python benchmarks/peers_<name>.py WORK_JSON RESULT_JSON *extra`: a runner writing StepClock's JSON."""
    result = work_dir / f"{name}.json"
    result.unlink(missing_ok=True)
    cmd = [python, str(HERE / f"peers_{name}.py"), str(work_dir / "work.json"), str(result), *extra]
    error = run_logged(cmd, REPO, env, work_dir / f"{name}.log", args.timeout)
    if error:
        return Round(name, [], error=error)
    data = json.loads(result.read_text())
    try:
        return Round(name, step_seconds_from_ends(data["step_ends"], args.steps, args.warmup), data["threads"])
    except ValueError as e:
        return Round(name, [], error=str(e))


def run_gptflow(work_dir: Path, args: argparse.Namespace) -> Round:
    return run_hooked("gptflow", sys.executable, [], work_dir, contender_env(args.threads), args)


def run_litgpt(work_dir: Path, args: argparse.Namespace) -> Round:
    extra = {} if args.litgpt_compile else {"TORCHDYNAMO_DISABLE": "1"}
    rotary = [str(args.litgpt_rotary)]
    return run_hooked("litgpt", args.litgpt_python, rotary, work_dir, contender_env(args.threads, **extra), args)


def nanogpt_run_dir(work: Work, checkout: Path, work_dir: Path) -> Path:
    """A run directory for nanoGPT's train.py: its configurator.py, and data/<dataset>/ linking the shards."""
    run = work_dir / "nanogpt"
    data = run / "data" / DATASET
    data.mkdir(parents=True)
    (run / "configurator.py").symlink_to(checkout / "configurator.py")
    for split in ("train", "val"):
        (data / f"{split}.bin").symlink_to(Path(work.shard_dir) / f"{split}.bin")
    if work.padded_vocab_size != 50304:  # nanoGPT's own default is GPT-2's 50257 padded to 50304
        (data / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": work.padded_vocab_size}))
    return run


def nanogpt_command(work: Work, python: str, checkout: Path, run: Path) -> list[str]:
    overrides = {
        "device": "cpu", "compile": False, "dtype": "float32", "dataset": DATASET, "out_dir": str(run / "out"),
        "n_layer": work.n_layer, "n_head": work.n_head, "n_embd": work.n_embd, "block_size": work.block_size,
        "batch_size": work.batch_size, "gradient_accumulation_steps": 1, "dropout": float(work.dropout),
        "bias": True, "learning_rate": float(work.lr), "weight_decay": float(work.weight_decay), "beta2": 0.999,
        "grad_clip": float(work.grad_clip), "warmup_iters": work.warmup_steps, "lr_decay_iters": work.steps,
        "min_lr": 0.0, "max_iters": work.steps - 1,  # nanoGPT runs iterations 0 .. max_iters
        "eval_interval": 10**9, "eval_iters": 1, "always_save_checkpoint": False, "log_interval": 1,
    }  # fmt: skip
    return [python, str(checkout / "train.py"), *(f"--{k}={v}" for k, v in overrides.items())]


def run_nanogpt(work: Work, work_dir: Path, args: argparse.Namespace) -> Round:
    run = work_dir / "nanogpt"
    log = work_dir / "nanogpt.log"
    error = run_logged(args.nanogpt_cmd, run, contender_env(args.threads), log, args.timeout)
    if error:
        return Round("nanoGPT", [], error=error)
    times = {int(i): float(ms) / 1000 for i, ms in NANOGPT_ITER.findall(log.read_text())}
    if sorted(times) != list(range(args.steps)):
        return Round("nanoGPT", [], error=f"expected iterations 0..{args.steps - 1} in {log}, found {len(times)}")
    return Round("nanoGPT", [times[i] for i in range(args.warmup, args.steps)], args.threads)


def notes(work: Work, args: argparse.Namespace, contenders: list[str]) -> list[str]:
    out = [
        f"same tokens for all: tiny Shakespeare, {'GPT-2 BPE' if work.preset == 'nanogpt' else 'gptflow BPE'} "
        f"(vocab {work.vocab_size}, embedding rows {work.padded_vocab_size}), uint16 shards at {work.shard_dir}",
    ]
    if work.padded_vocab_size != work.vocab_size:
        out.append(
            "gptflow takes the cross-entropy over the real vocabulary (padded logits cut off); nanoGPT and "
            "litgpt over the padded one"
        )
    if "nanoGPT" in contenders:
        out.append("nanoGPT: bias=True, tied embeddings, learned positions; ms/step from its own `time Xms` lines")
    if "litgpt" in contenders:
        pos = f"RoPE on {args.litgpt_rotary:.0%} of each head (no learned absolute positions in litgpt's GPT)"
        compiled = "kept (its default)" if args.litgpt_compile else "off: TORCHDYNAMO_DISABLE=1 (its pretrain compiles)"
        out += [
            f"litgpt: {pos}; LayerNorm, GELU MLP, biases, sequential residual, tied embeddings (train.tie_embeddings)",
            f"litgpt: torch.compile {compiled}",
            "litgpt: data = a litgpt DataModule of random windows of the same train.bin (TextFiles needs litdata's "
            "optimize step); AdamW over all parameters (no decay groups); chunked cross-entropy",
        ]
        if work.dropout:
            out.append(f"litgpt: no dropout in litgpt's GPT (gptflow and nanoGPT: {work.dropout})")
    return out


def print_table(title: str, rows: list[tuple[str, float, float, float | None]], tokens_per_step: int) -> None:
    """rows: (contender, tokens/s, ms/step mean, ms/step median) -- the gptflow row first."""
    print(title)
    print(f"  {'contender':<10} {'tokens/s':>10} {'ms/step':>9} {'(median)':>9} {'gptflow/x':>10}")
    base = next((tps for name, tps, *_ in rows if name == "gptflow"), None)
    for name, tps, ms, med in rows:
        ratio = f"{base / tps:10.3f}" if base else f"{'-':>10}"
        median = f"{med:9.1f}" if med is not None else f"{'':>9}"
        print(f"  {name:<10} {tps:>10,.0f} {ms:9.1f} {median} {ratio}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=("nanogpt", "demo"), default="nanogpt")
    p.add_argument("--rounds", type=int, default=3, help="runs per contender, cycled")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps at the start of each run")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS / MKL_NUM_THREADS of every contender")
    p.add_argument("--nanogpt", type=Path, default=REPO.parent / "peers" / "nanoGPT", help="nanoGPT checkout")
    p.add_argument("--nanogpt-python", default=sys.executable, help="interpreter for nanoGPT (default: this one)")
    p.add_argument("--litgpt-python", default=str(REPO.parent / "peers" / "litgpt-venv" / "bin" / "python"))
    p.add_argument("--litgpt-rotary", type=float, default=0.25, help="litgpt: share of each head rotated (RoPE)")
    p.add_argument("--litgpt-compile", action="store_true", help="litgpt: keep its torch.compile")
    p.add_argument("--skip", action="append", default=[], choices=PEERS, help="leave a peer out (repeatable)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    p.add_argument("--keep", type=Path, help="work in this new (or empty) directory and keep it: logs, shards")
    args = p.parse_args(argv)
    if not 1 <= args.warmup < args.steps:
        p.error("--warmup must be at least 1 and below --steps")

    skipped: list[str] = []
    contenders = ["gptflow"]
    if "nanogpt" in args.skip:
        skipped.append("nanoGPT: --skip nanogpt")
    elif not (args.nanogpt / "train.py").is_file():
        skipped.append(f"nanoGPT: no train.py in {args.nanogpt} (see the setup commands in --help)")
    else:
        contenders.append("nanoGPT")
    if "litgpt" in args.skip:
        skipped.append("litgpt: --skip litgpt")
    elif not Path(args.litgpt_python).is_file():
        skipped.append(f"litgpt: no interpreter {args.litgpt_python} (see the setup commands in --help)")
    else:
        probe = subprocess.run([args.litgpt_python, "-c", "import litgpt.pretrain"], capture_output=True, text=True)
        if probe.returncode:
            why = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else f"exit {probe.returncode}"
            skipped.append(f"litgpt: `import litgpt.pretrain` fails in {args.litgpt_python}: {why}")
        else:
            contenders.append("litgpt")

    with tempfile.TemporaryDirectory(prefix="gptflow-peers-") as tmp:
        work_dir = args.keep or Path(tmp)
        if args.keep and args.keep.exists() and any(args.keep.iterdir()):
            p.error(f"--keep {args.keep}: not empty")
        work_dir.mkdir(parents=True, exist_ok=True)
        work = prepare(args.preset, args.steps, work_dir)
        (work_dir / "work.json").write_text(json.dumps(asdict(work), indent=2))
        if "nanoGPT" in contenders:
            run = nanogpt_run_dir(work, args.nanogpt.resolve(), work_dir)
            args.nanogpt_cmd = nanogpt_command(work, args.nanogpt_python, args.nanogpt.resolve(), run)
        tokens_per_step = work.batch_size * work.block_size
        print(
            f"preset {work.preset}: {work.n_layer} layers x {work.n_embd}, {work.n_head} heads, block "
            f"{work.block_size}, batch {work.batch_size}, vocab {work.vocab_size} ({work.padded_vocab_size} rows), "
            f"dropout {work.dropout}, fp32, {args.threads} threads | {args.steps} steps, {args.warmup} untimed, "
            f"{tokens_per_step} tokens/step | {args.rounds} rounds of {', '.join(contenders)}"
        )
        for line in notes(work, args, contenders):
            print(f"note: {line}")
        for line in skipped:
            print(f"skipped: {line}")
        sys.stdout.flush()

        results: dict[str, list[Round]] = {c: [] for c in contenders}
        runners = {
            "gptflow": lambda: run_gptflow(work_dir, args),
            "nanoGPT": lambda: run_nanogpt(work, work_dir, args),
            "litgpt": lambda: run_litgpt(work_dir, args),
        }
        for r in range(args.rounds):
            rows = []
            for name in contenders:
                t0 = time.perf_counter()
                res = runners[name]()
                wall = time.perf_counter() - t0
                if res.error:
                    print(f"round {r + 1}: {name} failed ({wall:.0f} s): {res.error}")
                    continue
                results[name].append(res)
                med = 1000 * statistics.median(res.step_seconds)
                rows.append((name, res.tokens_per_s(tokens_per_step), res.ms_per_step(), med))
                if res.threads != args.threads:
                    print(f"warning: {name} ran with {res.threads} torch threads")
                load = os.getloadavg()[0]  # other work on the machine skews the figures: shown per run
                print(f"  ({name}: {wall:.0f} s wall including start-up; 1-min load average after: {load:.1f})")
                sys.stdout.flush()
            print_table(f"round {r + 1}", rows, tokens_per_step)
            sys.stdout.flush()

    medians = []
    for name in contenders:
        if results[name]:
            tps = statistics.median(res.tokens_per_s(tokens_per_step) for res in results[name])
            medians.append((name, tps, 1000 * tokens_per_step / tps, None))
    if not medians:
        return 1
    print_table("median over rounds (ms/step: tokens per step / median tokens/s)", medians, tokens_per_step)
    by_name = {name: tps for name, tps, *_ in medians}
    if "gptflow" in by_name:
        for peer in contenders[1:]:
            if peer in by_name:
                print(f"ratio gptflow/{peer} = {by_name['gptflow'] / by_name[peer]:.3f} (tokens/s, median of rounds)")
    for line in skipped:
        print(f"skipped: {line}")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
