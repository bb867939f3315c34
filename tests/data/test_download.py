"""hmic download against an HTTP server on 127.0.0.1 started by the test."""

import hashlib
import io
import os
import tarfile
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hmic.data import download as dl
from hmic.cli import app
from hmic.errors import HmicError

PAYLOAD = os.urandom(300_000)


class Server:
    """Serves files from a dict; honours Range; can cut the first response short."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.cut_after: int | None = None
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                raw = self.path.lstrip("/").split("?")[0]
                name = urllib.parse.unquote(raw)
                rng = self.headers.get("Range")
                outer.requests.append({"path": raw, "range": rng})
                body = outer.files.get(name)
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                chunk = body[start:]
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(chunk)))
                self.end_headers()
                if outer.cut_after is not None:
                    cut, outer.cut_after = outer.cut_after, None
                    self.wfile.write(chunk[:cut])
                    self.wfile.flush()
                    self.connection.shutdown(2)  # the connection drops mid-file
                    return
                self.wfile.write(chunk)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_complete_download(tmp_path):
    with Server({"file.bin": PAYLOAD}) as srv:
        out = dl.download_file(f"{srv.url}/file.bin", tmp_path / "file.bin", md5(PAYLOAD))
    assert out.read_bytes() == PAYLOAD
    assert not (tmp_path / "file.bin.part").exists()
    # a second call finds the verified file and asks the server nothing
    with Server({"file.bin": PAYLOAD}) as srv:
        dl.download_file(f"{srv.url}/file.bin", tmp_path / "file.bin", md5(PAYLOAD))
        assert srv.requests == []


def test_interrupted_download_resumes_with_range(tmp_path):
    dest = tmp_path / "file.bin"
    with Server({"file.bin": PAYLOAD}) as srv:
        srv.cut_after = 100_000
        with pytest.raises(HmicError) as e:
            dl.download_file(f"{srv.url}/file.bin", dest, md5(PAYLOAD))
        assert "resume" in str(e.value)
        assert not dest.exists()
        kept = (tmp_path / "file.bin.part").stat().st_size
        assert 0 < kept < len(PAYLOAD)
        dl.download_file(f"{srv.url}/file.bin", dest, md5(PAYLOAD))
        assert srv.requests[-1]["range"] == f"bytes={kept}-"
    assert dest.read_bytes() == PAYLOAD


def test_checksum_mismatch_leaves_nothing_under_the_final_name(tmp_path):
    dest = tmp_path / "file.bin"
    with Server({"file.bin": PAYLOAD}) as srv:
        with pytest.raises(HmicError, match="checksum mismatch"):
            dl.download_file(f"{srv.url}/file.bin", dest, "0" * 32)
    assert not dest.exists() and not (tmp_path / "file.bin.part").exists()


def test_network_error_is_one_line_with_a_retry_hint(tmp_path):
    with Server({}) as srv:
        url = srv.url
    with pytest.raises(HmicError) as e:
        dl.download_file(f"{url}/file.bin", tmp_path / "f", "0" * 32, timeout=2)
    message = str(e.value)
    assert "\n" not in message and "failed" in message and ("retry" in message or "resume" in message)


def make_tar(entries: list[tuple[str, bytes | None, str | None]]) -> bytes:
    """entries: (name, data or None for a folder, symlink target or None)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data, link in entries:
            info = tarfile.TarInfo(name)
            if link is not None:  # "hard:TARGET" is a hard link, anything else a symbolic one
                hard = link.startswith("hard:")
                info.type, info.linkname = (tarfile.LNKTYPE, link[5:]) if hard else (tarfile.SYMTYPE, link)
                tar.addfile(info)
            elif data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("bad", [
    ("openmic-2018/../escaped.txt", b"x", None),
    ("/tmp/hmic-absolute-escape.txt", b"x", None),
    ("openmic-2018/link", None, "../../outside"),
])
def test_archive_entries_escaping_the_folder_are_refused(tmp_path, bad):
    archive = make_tar([("openmic-2018/class-map.json", b"{}", None), bad])
    (tmp_path / "a.tgz").write_bytes(archive)
    target = tmp_path / "target"
    with pytest.raises(HmicError, match="refusing to extract"):
        dl.safe_extract(tmp_path / "a.tgz", target)
    assert not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/hmic-absolute-escape.txt").exists()
    assert not (target / "openmic-2018" / "class-map.json").exists()  # checked before anything is written


def test_fetch_openmic_end_to_end_and_skips_when_done(tmp_path):
    archive = make_tar([("openmic-2018", None, None), ("openmic-2018/class-map.json", b'{"a": 0}', None),
                        ("openmic-2018/partitions/split01_train.csv", b"000001_0\n", None)])
    source = dl.Source("openmic", "unused", "openmic-2018-v1.0.0.tgz", md5(archive))
    data_dir = tmp_path / "data" / "openmic-2018"
    with Server({source.filename: archive}) as srv:
        dl.fetch_openmic(data_dir, tmp_path / "downloads", base_url=srv.url, source=source)
        assert (data_dir / "class-map.json").read_text() == '{"a": 0}'
        assert (data_dir / "partitions" / "split01_train.csv").exists()
        n = len(srv.requests)
        dl.fetch_openmic(data_dir, tmp_path / "downloads", base_url=srv.url, source=source)
        assert len(srv.requests) == n  # nothing fetched again


def test_cli_download_checkpoint_via_base_url_reports_mismatch(tmp_path):
    with Server({dl.CNN14.filename: b"not the checkpoint"}) as srv:
        result = CliRunner().invoke(app, ["download", "cnn14", "--checkpoint-dir", str(tmp_path), "--base-url", srv.url])
        assert srv.requests and srv.requests[0]["path"] == "Cnn14_16k_mAP%3D0.438.pth"
    assert result.exit_code != 0
    assert isinstance(result.exception, HmicError) and "checksum mismatch" in str(result.exception)
    assert not (tmp_path / dl.CNN14.filename).exists()


def test_mirror_url_uses_the_environment_variable(monkeypatch):
    monkeypatch.setenv(dl.BASE_URL_ENV, "http://127.0.0.1:9/mirror/")
    assert dl.OPENMIC.url_for(None) == "http://127.0.0.1:9/mirror/openmic-2018-v1.0.0.tgz"
    monkeypatch.delenv(dl.BASE_URL_ENV)
    assert dl.OPENMIC.url_for(None).startswith("https://zenodo.org/records/1432913/")


def make_tar_with_hardlinks(entries) -> bytes:
    """(name, "sym" | "hard" | "file", link target or bytes) entries, through ``make_tar``."""
    return make_tar([(name, value if kind == "file" else None,
                      None if kind == "file" else (value if kind == "sym" else "hard:" + value)) for name, kind, value in entries])


@pytest.mark.parametrize("entries", [
    [("x", "sym", "."), ("x/y", "sym", "..")],  # each link stays inside on its own; through x, y escapes
    [("d", "sym", "sub"), ("sub", "sym", ".."), ("d/evil.txt", "file", b"x")],  # a chain of links
    [("a", "sym", "."), ("a/../../evil.txt", "file", b"x")],
    [("s", "sym", "/etc"), ("h", "hard", "s/passwd")],
    [("f.txt", "file", b"ok"), ("h", "hard", "../../etc/passwd")],  # a hard link out
    [("s", "sym", "inner"), ("h", "hard", "s")],  # a hard link to a link of the archive
])
def test_link_chains_and_hard_links_that_escape_are_refused_before_anything_is_written(tmp_path, entries):
    (tmp_path / "a.tar").write_bytes(make_tar_with_hardlinks([("ok.txt", "file", b"fine"), *entries]))
    target = tmp_path / "target"
    with pytest.raises(HmicError, match="tried to escape its folder"):
        dl.safe_extract(tmp_path / "a.tar", target)
    assert list(target.iterdir()) == [] and not (tmp_path / "evil.txt").exists()


def test_links_that_stay_inside_still_extract(tmp_path):
    entries = [("sub/f.txt", "file", b"data"), ("alias.txt", "sym", "sub/f.txt"), ("same.txt", "hard", "sub/f.txt")]
    (tmp_path / "a.tar").write_bytes(make_tar_with_hardlinks(entries))
    dl.safe_extract(tmp_path / "a.tar", tmp_path / "t")
    assert (tmp_path / "t" / "alias.txt").read_bytes() == (tmp_path / "t" / "same.txt").read_bytes() == b"data"
