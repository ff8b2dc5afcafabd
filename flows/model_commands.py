"""The model commands of the CLI: `generate` (streamed sampling), `import-hf` and `export-hf`.

Heavy imports (torch) happen inside the functions, after the CLI has parsed and checked arguments.
"""

from __future__ import annotations

import argparse
import codecs
from pathlib import Path
from typing import TextIO

from flows.model_ref import resolve_model_dir
from flows.workspace import Workspace
from gpt.config.fields import ConfigError


def _check_sampling(args: argparse.Namespace) -> None:
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise ConfigError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ConfigError(f"--top-p must be in (0, 1], got {args.top_p}")


def generate_command(args: argparse.Namespace, ws: Workspace, out: TextIO) -> int:
    """Resolve the model and its tokenizer, then write the prompt and each new token to `out` as it comes."""
    from gpt.data.tokenizer import META_FILE

    _check_sampling(args)
    model_dir = resolve_model_dir(args.model, ws)
    tok_dir = Path(args.tokenizer) if args.tokenizer else model_dir
    if not (tok_dir / META_FILE).is_file():
        raise ConfigError(f"no tokenizer in {tok_dir} ({META_FILE} missing): pass --tokenizer DIR")

    import torch

    from gpt.data.tokenizer import load_tokenizer
    from gpt.model.generate import stream_tokens
    from gpt.model.transformer import load_model

    enc = load_tokenizer(tok_dir)
    model = load_model(model_dir)
    if enc.n_vocab > model.vocab_size:
        raise ConfigError(f"tokenizer in {tok_dir} has {enc.n_vocab} tokens, the model only {model.vocab_size}")
    prompt = enc.encode_ordinary(args.prompt) or [enc.eot_token]
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span tokens
    out.write(args.prompt)
    out.flush()
    tokens = stream_tokens(
        model,
        prompt,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        stop_id=enc.eot_token,
        generator=torch.Generator().manual_seed(args.seed),
    )
    for token in tokens:
        out.write(decoder.decode(enc.decode_single_token_bytes(token)))
        out.flush()
    out.write(decoder.decode(b"", final=True) + "\n")
    return 0


def import_hf_command(args: argparse.Namespace) -> int:
    """HF `openai-gpt`/`gpt2` checkpoint dir -> gptflow model dir; prints what was imported."""
    from gpt.model.hf import ConversionError, import_hf

    try:
        model = import_hf(args.src, args.out)
    except ConversionError as e:
        raise ConfigError(f"import-hf: {e}") from None
    c = model.config
    params = model.num_params(non_embedding=False)
    print(f"{args.out}: {c.norm}-LN GPT {c.n_layer}x{c.n_embd}, vocab {c.vocab_size}, {params:,} parameters")
    return 0


def export_hf_command(args: argparse.Namespace, ws: Workspace) -> int:
    """gptflow model (dir, stage dir or run id) -> HF checkpoint dir."""
    from gpt.model.hf import ConversionError, export_hf

    try:
        export_hf(resolve_model_dir(args.model, ws), args.out)
    except ConversionError as e:
        raise ConfigError(f"export-hf: {e}") from None
    print(args.out)
    return 0
