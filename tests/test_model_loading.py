"""The model artifact is loaded without running code it carries (issue 14)."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest

from operators.predict import (
    DEFAULT_ARTIFACT,
    FAST_FILE,
    ArtifactError,
    ModelRuntime,
    sha256_file,
)


class _Exploit:
    """What a tampered model.pkl could hold: a call made while unpickling."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # creates a file: proof that code ran


def test_the_shipped_model_loads():
    assert ModelRuntime(DEFAULT_ARTIFACT).model_id


@pytest.mark.parametrize("fast_file", [False, True], ids=["pickle-only", "with-fast-file"])
def test_a_pickle_that_runs_code_is_refused_even_with_a_matching_checksum(tmp_path, fast_file):
    art = tmp_path / "artifact"
    shutil.copytree(DEFAULT_ARTIFACT, art)
    marker = tmp_path / "code-ran"
    bundle = pickle.loads((art / "model.pkl").read_bytes())  # the real bundle (trusted here)
    bundle["meta"] = _Exploit(str(marker))
    (art / "model.pkl").write_bytes(pickle.dumps(bundle, protocol=5))
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["model_sha256"] = sha256_file(art / "model.pkl")  # the attacker fixes the checksum
    if not fast_file:
        (art / FAST_FILE).unlink()
        del manifest["fast_sha256"]
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"io\.open is not an allowed model type"):
        ModelRuntime(art).model  # noqa: B018 (with fast.npz, model.pkl is read when asked for)
    assert not marker.exists(), "unpickling ran the attacker's code"
