"""Reproducible installs: the lock files pin every dependency at a version pyproject.toml
allows, with hashes; the shipped model's scikit-learn version is the one everything pins;
`python -m models.train` never replaces an artifact unless asked."""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from models import train
from operators.predict import DEFAULT_ARTIFACT
from tests.conftest import shared_file

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", re.MULTILINE)


def _locked(name: str) -> dict[str, str]:
    """{canonical package name: version} of one lock file."""
    text = (ROOT / name).read_text()
    return {canonicalize_name(n): v for n, v in PIN.findall(text)}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_shipped_models_scikit_learn_is_what_pyproject_the_locks_and_this_venv_pin():
    manifest = json.loads((DEFAULT_ARTIFACT / "manifest.json").read_text())
    trained = manifest["versions"]["scikit-learn"]
    (req,) = [Requirement(r) for r in _project()["dependencies"] if r.startswith("scikit-learn")]
    assert str(req.specifier) == f"=={trained}", "pyproject must pin the model's scikit-learn"
    assert _locked("requirements.lock")["scikit-learn"] == trained
    assert _locked("requirements-dev.lock")["scikit-learn"] == trained
    assert version("scikit-learn") == trained


@pytest.mark.parametrize(
    ("lock", "extra"), [("requirements.lock", None), ("requirements-dev.lock", "dev")]
)
def test_every_dependency_is_locked_at_a_version_pyproject_allows(lock, extra):
    project = _project()
    reqs = [Requirement(r) for r in project["dependencies"]]
    if extra:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    pins = _locked(lock)
    for req in reqs:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in {lock}: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{lock} pins {req.name}=={pins[name]}, pyproject asks {req.specifier}: run `make lock`"
        )


def test_the_runtime_lock_agrees_with_the_dev_lock_and_every_pin_has_hashes():
    runtime, dev = _locked("requirements.lock"), _locked("requirements-dev.lock")
    assert runtime and set(runtime) <= set(dev)
    assert {n: v for n, v in dev.items() if n in runtime} == runtime
    for lock in ("requirements.lock", "requirements-dev.lock"):
        blocks = re.split(r"\n(?=[A-Za-z0-9])", (ROOT / lock).read_text())
        for block in blocks:
            if PIN.match(block):
                assert "--hash=sha256:" in block, f"{lock}: {block.splitlines()[0]} has no hash"


def test_this_environment_was_installed_from_the_dev_lock():
    for name, pinned in _locked("requirements-dev.lock").items():
        assert version(name) == pinned, f"{name} {version(name)} installed, {pinned} locked"


def test_training_into_a_directory_that_holds_an_artifact_needs_overwrite(tmp_path):
    shipped = tmp_path / "default"
    shutil.copytree(DEFAULT_ARTIFACT, shipped)
    before = (shipped / "model.pkl").read_bytes()
    with pytest.raises(SystemExit, match="already holds an artifact; add --overwrite"):
        train.main(["--out", str(shipped)])
    assert (shipped / "model.pkl").read_bytes() == before


@pytest.mark.slow
@pytest.mark.realdata
def test_training_without_out_writes_a_new_directory_named_by_the_model_id(tmp_path, monkeypatch):
    candles = shared_file("binance_usdm_BTC_USDT_2025-09-19_2025-10-27_5m.json")
    monkeypatch.chdir(tmp_path)
    args = ["--data", f"candles:{candles}", "--max-bars", "2500", "--folds", "2"]
    train.main(args)
    (made,) = (tmp_path / "out" / "models").iterdir()
    manifest = json.loads((made / "manifest.json").read_text())
    assert made.name == manifest["model_id"]
    train.main(args)  # the same model again: kept, no second directory, no staging left
    assert list((tmp_path / "out" / "models").iterdir()) == [made]
