"""The https source path for real, against a local HTTP server on 127.0.0.1."""

import hashlib
import http.server
import threading
from functools import partial
from pathlib import Path

import pytest

from gpt.data.sources import SourceError, check_source, download


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_verifies_and_caches(server, tmp_path):
    root, url = server
    data = b"To be, or not to be.\r\n" * 100
    (root / "book.txt").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    path = download(f"{url}/book.txt", digest, tmp_path / "cache")
    assert path.read_bytes() == data and path.name == digest
    (root / "book.txt").unlink()  # served from the cache from now on
    assert download(f"{url}/book.txt", digest, tmp_path / "cache") == path


def test_download_checksum_mismatch_is_one_clear_error(server, tmp_path):
    root, url = server
    (root / "book.txt").write_bytes(b"something else")
    with pytest.raises(SourceError, match="checksum mismatch .* expected sha256 0{64}, got [0-9a-f]{64}"):
        download(f"{url}/book.txt", "0" * 64, tmp_path / "cache")


def test_unreachable_url_says_how_to_work_offline(tmp_path):
    with pytest.raises(SourceError, match="GPTFLOW_MIRROR"):
        download("http://127.0.0.1:9/none.txt", "0" * 64, tmp_path / "cache")


def test_https_corpus_source_needs_a_checksum(tmp_path):
    with pytest.raises(SourceError, match="needs a checksum"):
        check_source("https://example.org/corpus.txt")


def test_https_corpus_format_follows_the_url_name(server, tmp_path):
    from gpt.data.corpus import build_corpus, read_documents

    root, url = server
    data = b'{"text": "one"}\n{"text": "two"}\n'
    (root / "docs.jsonl").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    download(f"{url}/docs.jsonl", digest, tmp_path / "cache")  # cached under its sha256, no extension
    # the https path finds the cached copy and reads it as JSONL because the URL says .jsonl
    build_corpus(f"https://example.org/docs.jsonl#sha256={digest}", tmp_path / "out.jsonl", tmp_path / "cache")
    assert list(read_documents(tmp_path / "out.jsonl")) == ["one", "two"]


def test_partial_download_restarts_when_the_server_ignores_ranges(server, tmp_path):
    root, url = server  # SimpleHTTPRequestHandler answers 200 with the whole file to a Range request
    data = b"0123456789" * 1000
    (root / "book.txt").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / f"{digest}.part").write_bytes(data[:500])
    assert download(f"{url}/book.txt", digest, tmp_path / "cache").read_bytes() == data


def test_network_errors_are_transient_and_client_errors_are_not(server, tmp_path):
    _, url = server
    with pytest.raises(SourceError) as missing:
        download(f"{url}/missing.txt", "0" * 64, tmp_path / "cache")
    assert "404" in str(missing.value) and not missing.value.transient
    with pytest.raises(SourceError) as unreachable:
        download("http://127.0.0.1:9/none.txt", "0" * 64, tmp_path / "cache")
    assert unreachable.value.transient


def test_checksum_mismatch_drops_the_partial_file(server, tmp_path):
    root, url = server
    (root / "book.txt").write_bytes(b"something else")
    with pytest.raises(SourceError, match="checksum mismatch") as err:
        download(f"{url}/book.txt", "0" * 64, tmp_path / "cache")
    assert not err.value.transient and not list((tmp_path / "cache").iterdir())


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves `Range: bytes=N-` with 206, as real file hosts do; records the ranges asked for."""

    ranges: list[str] = []

    def do_GET(self):
        spec = self.headers.get("Range")
        if not spec:
            return super().do_GET()
        RangeHandler.ranges.append(spec)
        data = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
        start = int(spec.removeprefix("bytes=").rstrip("-"))
        self.send_response(206)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        self.wfile.write(data[start:])


def test_partial_download_resumes_with_a_range_request(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    data = b"abcdefghij" * 1000
    (root / "book.txt").write_bytes(data)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        digest = hashlib.sha256(data).hexdigest()
        (tmp_path / "cache").mkdir()
        (tmp_path / "cache" / f"{digest}.part").write_bytes(data[:4000])
        path = download(f"http://127.0.0.1:{httpd.server_address[1]}/book.txt", digest, tmp_path / "cache")
        assert path.read_bytes() == data and RangeHandler.ranges == ["bytes=4000-"]
    finally:
        httpd.shutdown()
