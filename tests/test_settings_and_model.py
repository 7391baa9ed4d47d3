"""Start-up checks: a bad setting stops the start, saying why (the artifact: test_model.py)."""

from __future__ import annotations

import json

import pytest

from dataflows.settings import Settings
from operators.config import ENSEMBLE_1_0, ConfigError, GuardMode


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


# The model artifact's loader, its refusals and its fast path: tests/test_model.py.
