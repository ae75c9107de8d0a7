"""The data registry: downloads from a real HTTP server on 127.0.0.1, verification, cache, errors."""
from __future__ import annotations

import hashlib
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from http_harness import serving

from lmlm import datasets
from lmlm.datasets import DataFile, Dataset, DatasetError, dataset_file, fetch
from lmlm.netutil import free_port

FILES = {"a.json": b'{"examples": []}\n', "sub/b.txt": b"x" * 200_000}


class FileHandler(BaseHTTPRequestHandler):
    """Serves FILES under /repo/; `mode` decides how: ok, corrupt (same size), short, long, cut, missing."""

    mode = "ok"
    requests: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        FileHandler.requests.append(self.path)
        body = FILES.get(self.path.removeprefix("/repo/"))
        if body is None or self.mode == "missing":
            self.send_error(404)
            return
        sent = body
        if self.mode == "corrupt":
            sent = body[:-1] + b"!"
        elif self.mode == "short":
            sent = body = body[: len(body) // 2]  # an honest Content-Length, a truncated file
        elif self.mode == "long":
            sent = body = body + b"more"
        elif self.mode == "cut":
            sent = body[: len(body) // 2]  # the connection drops before Content-Length bytes
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(sent)
        self.wfile.flush()
        if self.mode == "cut":
            self.close_connection = True


@pytest.fixture
def server():
    FileHandler.mode, FileHandler.requests = "ok", []
    with serving(FileHandler, "/repo") as url:
        yield url


@pytest.fixture
def tiny(monkeypatch, tmp_path) -> Path:
    """A registered data set "tiny" of FILES; LMLM_DATA_DIR is a fresh folder. Returns its folder."""
    files = tuple(DataFile(name, name, len(body), hashlib.sha256(body).hexdigest()) for name, body in FILES.items())
    ds = Dataset("tiny", "test files", "http://example.invalid", "MIT", "http://127.0.0.1:9/unused", files)
    monkeypatch.setitem(datasets.REGISTRY, "tiny", ds)
    monkeypatch.setenv("LMLM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("LMLM_DATA_URL", raising=False)
    return tmp_path / "data" / "tiny"


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_download_verifies_and_second_fetch_is_a_cache_hit(server, tiny):
    assert fetch("tiny", base_url=server, progress=False) == tiny
    assert {p: (tiny / p).read_bytes() for p in FILES} == FILES
    assert sorted(FileHandler.requests) == ["/repo/a.json", "/repo/sub/b.txt"]
    assert _leftovers(tiny) == ["a.json", "sub/b.txt"]  # no temporary files
    assert fetch("tiny", base_url=server, progress=False) == tiny
    assert dataset_file("tiny", "sub/b.txt", base_url=server) == tiny / "sub/b.txt"
    assert len(FileHandler.requests) == 2  # nothing downloaded twice


def test_base_url_from_environment(server, tiny, monkeypatch):
    monkeypatch.setenv("LMLM_DATA_URL", server + "/")
    assert dataset_file("tiny", "a.json", progress=False).read_bytes() == FILES["a.json"]
    assert FileHandler.requests == ["/repo/a.json"]  # only the file asked for


@pytest.mark.parametrize("mode, message", [
    ("corrupt", r"sub/b\.txt: SHA-256 [0-9a-f]{64} of the download from http://127\.0\.0\.1:\d+/repo/sub/b\.txt, "
                r"expected [0-9a-f]{64}"),
    ("short", r"sub/b\.txt: downloaded 100000 bytes from .*, expected 200000"),
    ("cut", r"sub/b\.txt: download from .* failed after \d+ of 200000 bytes"),
    ("long", r"sub/b\.txt: http://127\.0\.0\.1:\d+/repo/sub/b\.txt sends more than the expected 200000 bytes"),
    ("missing", r"sub/b\.txt: HTTP 404 from http://127\.0\.0\.1:\d+/repo/sub/b\.txt"),
])
def test_bad_download_is_a_clear_error_and_leaves_no_file(server, tiny, mode, message):
    FileHandler.mode = mode
    with pytest.raises(DatasetError, match=message):
        dataset_file("tiny", "sub/b.txt", base_url=server, progress=False)
    assert _leftovers(tiny) == []  # neither the final path nor a temporary file


def test_server_down_is_a_clear_error(tiny):
    url = f"http://127.0.0.1:{free_port()}/repo"  # nobody listens there
    with pytest.raises(DatasetError, match=r"tiny/a\.json: download from http://127\.0\.0\.1:\d+/repo/a\.json failed"):
        fetch("tiny", base_url=url, progress=False)
    assert _leftovers(tiny) == []


def test_present_file_with_wrong_checksum_is_an_error_until_force(server, tiny):
    (tiny / "sub").mkdir(parents=True)
    (tiny / "a.json").write_bytes(FILES["a.json"])
    bad = FILES["sub/b.txt"][:-1] + b"?"
    (tiny / "sub/b.txt").write_bytes(bad)
    expected, actual = hashlib.sha256(FILES["sub/b.txt"]).hexdigest(), hashlib.sha256(bad).hexdigest()
    with pytest.raises(DatasetError, match=rf"tiny/sub/b\.txt .*SHA-256 {actual}, expected {expected}.*--force"):
        fetch("tiny", base_url=server, progress=False)
    assert FileHandler.requests == [] and (tiny / "sub/b.txt").read_bytes() == bad  # never silently replaced
    (tiny / "a.json").write_bytes(b"{}")
    with pytest.raises(DatasetError, match=r"tiny/a\.json .*size 2 bytes, expected 17"):
        dataset_file("tiny", "a.json")

    FileHandler.mode = "corrupt"  # a failed forced download keeps the old file
    with pytest.raises(DatasetError, match="SHA-256"):
        fetch("tiny", base_url=server, progress=False, force=True)
    assert (tiny / "a.json").read_bytes() == b"{}"
    FileHandler.mode = "ok"
    fetch("tiny", base_url=server, progress=False, force=True)
    assert {p: (tiny / p).read_bytes() for p in FILES} == FILES and _leftovers(tiny) == ["a.json", "sub/b.txt"]


def test_unknown_names_are_clear_errors(tiny):
    with pytest.raises(DatasetError, match=r"unknown data set 'nope' \(known: .*lmlm-wiki"):
        fetch("nope")
    with pytest.raises(DatasetError, match=r"data set tiny: no file 'c\.json' \(files: a\.json, sub/b\.txt\)"):
        dataset_file("tiny", "c.json")


def test_default_data_dir_is_the_user_cache(monkeypatch):
    import platformdirs

    monkeypatch.delenv("LMLM_DATA_DIR", raising=False)
    assert datasets.dataset_dir("lmlm-wiki") == Path(platformdirs.user_cache_dir("lmlm")) / "data" / "lmlm-wiki"


def test_cli_fetch_list_and_path(server, tiny, capsys):
    from lmlm.cli import main

    assert main(["data", "fetch", "tiny", "--base-url", server, "--quiet"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(tiny)
    assert main(["data", "path", "tiny"]) == 0
    assert capsys.readouterr().out.strip() == str(tiny)
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "tiny  (2 files" in out and "2 present and valid" in out and "lmlm-wiki" in out
    assert main(["data", "fetch", "nope"]) == 1
    assert "unknown data set 'nope'" in capsys.readouterr().err


def test_lmlm_wiki_entry_matches_the_local_copy(lmlm_wiki, monkeypatch):
    """With LMLM_DATA_DIR at a (read-only) local copy, fetch only verifies: no download is tried."""
    monkeypatch.setenv("LMLM_DATA_DIR", str(lmlm_wiki.parent))
    dead = f"http://127.0.0.1:{free_port()}"
    assert fetch("lmlm-wiki", base_url=dead, progress=False) == lmlm_wiki
    for f in datasets.get("lmlm-wiki").files:
        data = (lmlm_wiki / f.name).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (f.size, f.sha256), f.name
    assert dataset_file("lmlm-wiki", "LICENSE", base_url=dead).read_text().startswith("MIT License")
