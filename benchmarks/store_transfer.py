"""Upload (push) and download-and-verify (pull) time of one stage directory through a `--store`.

Builds a stage of `--files` random files totalling `--mb` MB in a scratch workspace, pushes it to a
`file://` store and to an S3 bucket on moto's server on 127.0.0.1, then pulls it into a second
workspace (download, sha256 of every file, fsync, rename) and prints MB/s for each. moto keeps
objects in memory in this process, so its figures bound the client side, not a real network.

    python benchmarks/store_transfer.py [--mb 64] [--files 4]
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from pathlib import Path

from tasks.remote_store import RemoteStore
from tasks.stage import Stage, commit
from tasks.stages import BY_KIND


def make_stage(workspace: Path) -> Stage:
    return Stage("encode", BY_KIND["encode"], {"bench": 1}, [], workspace / "artifacts")


def build(workspace: Path, mb: int, files: int) -> Stage:
    stage = make_stage(workspace)
    out = stage.prepare_partial()
    for i in range(files):
        (out / f"shard{i}.bin").write_bytes(os.urandom(mb * 2**20 // files))
    commit(stage, {}, {}, None)
    return stage


def measure(url: str, src: Stage, scratch: Path, mb: int) -> None:
    store = RemoteStore(url)
    t0 = time.perf_counter()
    store.push(src)
    push_s = time.perf_counter() - t0
    dst = make_stage(scratch / f"b-{time.monotonic_ns()}")
    t0 = time.perf_counter()
    assert store.pull(dst) and dst.is_done()
    pull_s = time.perf_counter() - t0
    print(f"{url.split('://')[0]:<5} {mb} MB  push {push_s:6.2f} s ({mb / push_s:7.1f} MB/s)  "
          f"pull+verify {pull_s:6.2f} s ({mb / pull_s:7.1f} MB/s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=64)
    ap.add_argument("--files", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gptflow-store-bench-") as tmp:
        scratch = Path(tmp)
        src = build(scratch / "a", args.mb, args.files)
        measure((scratch / "store").as_uri(), src, scratch, args.mb)
        try:
            import boto3
            from moto.server import ThreadedMotoServer
        except ImportError:
            print("s3    skipped: pip install 'moto[server]' s3fs boto3")
            return
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
        os.environ["AWS_ENDPOINT_URL_S3"] = f"http://127.0.0.1:{port}"
        try:
            boto3.client("s3").create_bucket(Bucket="bench")
            measure("s3://bench/store", src, scratch, args.mb)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
