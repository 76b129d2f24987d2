"""Where weights come from: the registry, the cache folder, offline messages, and a download that checks its bytes.

Nothing here touches the network: downloads read ``file://`` URLs and the hub client is replaced by a stub.
"""
from __future__ import annotations

import hashlib
import sys
import types
import urllib.error

import pytest

from diffseg_core import weights as W


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFSEG_WEIGHTS", str(tmp_path / "w"))
    return tmp_path / "w"


def test_registry_names_source_licence_and_the_official_configurations():
    from diffseg_core.cdal.official import OFFICIAL_CDAL

    for e in W.WEIGHTS.values():
        assert e.url.startswith("https://") and e.source and e.licence and e.filename in e.url
    for spec in OFFICIAL_CDAL.values():
        assert all(n in W.WEIGHTS for n in spec.weights)
    assert W.WEIGHTS["adm256-uncond"].url.endswith("/jul-2021/256x256_diffusion_uncond.pt")
    assert W.WEIGHTS["cdal-monuseg"].hf_repo == "Hejrati/cDAL" and W.WEIGHTS["cdal-monuseg"].hf_path.startswith("saved_models/")
    assert "Non-Commercial" in W.WEIGHTS["cdal-monuseg"].licence or "NC" in W.WEIGHTS["cdal-monuseg"].licence


def test_find_require_and_the_offline_message(folder):
    assert W.weights_dir() == folder
    assert W.find_weights("cdal-monuseg") is None
    with pytest.raises(W.WeightsNotFound) as err:
        W.require_weights("cdal-monuseg")
    msg = str(err.value)
    assert "python -m diffseg_core.weights fetch cdal-monuseg" in msg and str(folder) in msg and "huggingface.co" in msg
    (folder / "saved_models").mkdir(parents=True)
    empty = folder / "saved_models" / W.WEIGHTS["cdal-monuseg"].filename
    empty.write_bytes(b"")                                  # a 0-byte git placeholder does not count
    assert W.find_weights("cdal-monuseg") is None
    empty.write_bytes(b"weights")                           # the authors' saved_models/ layout is accepted
    assert W.require_weights("cdal-monuseg") == empty
    with pytest.raises(ValueError, match="unknown weights"):
        W.find_weights("nope")


def _local_entry(tmp_path, monkeypatch, payload: bytes, sha: str | None):
    src = tmp_path / "src.bin"
    src.write_bytes(payload)
    entry = W.WeightsFile("test-file", "file.pt", "a test file", "tests", "none", src.as_uri(), sha256=sha)
    monkeypatch.setitem(W.WEIGHTS, "test-file", entry)
    return entry


def test_http_download_checks_and_records_the_sha256(tmp_path, folder, monkeypatch):
    payload = b"0123456789" * 1000
    sha = hashlib.sha256(payload).hexdigest()
    _local_entry(tmp_path, monkeypatch, payload, sha)
    path = W.fetch_weights("test-file", progress=False)
    assert path == folder / "file.pt" and path.read_bytes() == payload
    assert (folder / "file.pt.sha256").read_text().split()[0] == sha
    assert W.fetch_weights("test-file") == path              # already there: kept, re-checked against its record
    path.write_bytes(b"corrupted")
    with pytest.raises(ValueError, match="does not match"):
        W.fetch_weights("test-file")
    _local_entry(tmp_path, monkeypatch, payload, "0" * 64)   # a wrong published checksum: nothing is kept
    with pytest.raises(ValueError, match="does not match"):
        W.fetch_weights("test-file", force=True)
    assert not (folder / "file.pt").exists() and not (folder / "file.pt.part").exists()


def test_offline_fetch_says_where_to_put_the_file(folder, monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    hub = types.ModuleType("huggingface_hub")
    hub.hf_hub_download = offline
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    monkeypatch.setattr(W.urllib.request, "urlopen", offline)
    for name in ("cdal-cxr-fold1", "adm256-uncond"):
        with pytest.raises(W.WeightsNotFound, match="Offline: download") as err:
            W.fetch_weights(name, progress=False)
        assert str(folder / W.WEIGHTS[name].filename) in str(err.value)
    assert W.main(["where", "adm256-uncond"]) == 2
    assert W.main(["list"]) == 0
