"""Start-up checks: a bad setting or a wrong model artifact stops the start, saying why."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dataflows.settings import Settings
from operators.config import ENSEMBLE_1_0, ConfigError, GuardMode
from operators.features import FEATURES
from operators.predict import DEFAULT_ARTIFACT, ArtifactError, ModelRuntime, sha256_file


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ENSEMBLE_PRESET": "ensemble_9"}, "preset='ensemble_9'"),
        ({"ENSEMBLE_SEED": "seven"}, "ENSEMBLE_SEED='seven'"),
        ({"ENSEMBLE_DAYS": "-1"}, "ENSEMBLE_DAYS='-1'"),
        ({"ENSEMBLE_OVERRIDES": "{not json"}, "ENSEMBLE_OVERRIDES"),
        ({"ENSEMBLE_OVERRIDES": '{"risk.pos_max": -1}'}, "risk.pos_max=-1"),
        ({"ENSEMBLE_OVERRIDES": '{"thresholds.CONF_MIN": 0.4}'}, "thresholds.CONF_MIN=0.4"),
        ({"ENSEMBLE_OVERRIDES": '{"risk.vol_gaurd": "on"}'}, "unknown setting 'risk.vol_gaurd'"),
        (
            {"ENSEMBLE_OVERRIDES": '{"gates.consensus_gate": "maybe"}'},
            "gates.consensus_gate='maybe'",
        ),
        ({"ENSEMBLE_OVERRIDES": '{"execution.dry_run": false}'}, "execution.dry_run=False"),
        ({"ENSEMBLE_INPUT": "candles:/no/such/file.csv"}, "no file at /no/such/file.csv"),
        ({"ENSEMBLE_INPUT": "quotes:x.csv"}, "expected KIND:PATH"),
        ({"ENSEMBLE_CLOCK": "lunar"}, "ENSEMBLE_CLOCK='lunar'"),
        ({"ENSEMBLE_CANDLE_SYMBOLS": "SOL-PERP"}, "must be a subset"),
        ({"ENSEMBLE_KAFKA_BOOTSTRAP": "localhost"}, "ENSEMBLE_KAFKA_BOOTSTRAP='localhost'"),
        ({"ENSEMBLE_KAFKA_TAIL": "yes"}, "ENSEMBLE_KAFKA_TAIL='yes'"),
        ({"ENSEMBLE_TOPIC_PREFIX": "a b"}, "ENSEMBLE_TOPIC_PREFIX='a b'"),
    ],
)
def test_a_bad_setting_stops_the_start_naming_the_value(env, named):
    with pytest.raises(ConfigError) as e:
        Settings.from_env(env)
    assert named in str(e.value)


def test_defaults_are_the_1_1_preset_on_the_generator():
    s = Settings.from_env({})
    assert s.strategy.strategy_id == "ensemble_1_1"
    assert s.generator is not None and s.symbols == {"BTC-PERP", "ETH-PERP"}
    assert s.candle_symbols == {"ETH-PERP"}


def test_strategy_id_selects_the_1_0_preset_and_overrides_apply():
    s = Settings.from_env(
        {
            "STRATEGY_ID": "ensemble_1_0",
            "ENSEMBLE_OVERRIDES": json.dumps({"risk.vol_guard": "shadow"}),
        }
    )
    assert s.strategy.thresholds == ENSEMBLE_1_0.thresholds
    assert s.strategy.risk.vol_guard is GuardMode.SHADOW


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    dst = tmp_path / "artifact"
    shutil.copytree(DEFAULT_ARTIFACT, dst)
    return dst


def _edit_manifest(path: Path, **changes) -> None:
    m = json.loads((path / "manifest.json").read_text())
    m.update(changes)
    (path / "manifest.json").write_text(json.dumps(m))


def test_the_shipped_artifact_loads_and_predicts_a_probability():
    rt = ModelRuntime(DEFAULT_ARTIFACT)
    p = rt.predict(dict.fromkeys(FEATURES, 0.0)).p_up
    assert 0.0 <= p <= 1.0


def test_the_fast_path_matches_scikit_learn_predict_proba():
    import numpy as np

    rt = ModelRuntime(DEFAULT_ARTIFACT)
    assert rt.fast_meta is not None
    x = np.random.default_rng(3).normal(0, 0.02, size=(500, len(FEATURES)))
    x[:, FEATURES.index("rsi_14")] = 50 + 20 * x[:, 0] / 0.02
    ref = rt.meta.predict_proba(x)[:, 1]
    fast = np.array([rt.fast_meta.p_up(row) for row in x])
    assert np.max(np.abs(ref - fast)) < 1e-12


def test_a_changed_model_file_is_refused(artifact):
    with open(artifact / "model.pkl", "ab") as f:
        f.write(b"tampered")
    with pytest.raises(ArtifactError, match="sha256"):
        ModelRuntime(artifact)


def test_a_different_feature_list_is_refused(artifact):
    _edit_manifest(artifact, features=list(reversed(FEATURES)))
    with pytest.raises(ArtifactError, match="retrain"):
        ModelRuntime(artifact)


def test_another_scikit_learn_version_is_refused(artifact):
    m = json.loads((artifact / "manifest.json").read_text())
    m["versions"]["scikit-learn"] = "0.0.1"
    (artifact / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="scikit-learn 0.0.1"):
        ModelRuntime(artifact)


def test_a_missing_artifact_says_how_to_make_one(tmp_path):
    with pytest.raises(ArtifactError, match="python -m models.train"):
        ModelRuntime(tmp_path)


def test_the_manifest_checksum_matches_the_shipped_model():
    m = json.loads((DEFAULT_ARTIFACT / "manifest.json").read_text())
    assert m["model_sha256"] == sha256_file(DEFAULT_ARTIFACT / "model.pkl")
    assert m["features"] == list(FEATURES)
