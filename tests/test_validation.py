"""One way to check a setting's value (operators/validation.py), in the three places that
take settings: the flow's environment, the strategy config (and its overrides), and the
alerts consumer's file and environment. Each names a bad value as its user wrote it."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from consumers.alerts import AlertsConfigError, Silence, load_config
from dataflows.settings import Settings
from operators.config import (
    ENSEMBLE_1_1,
    CohortConfig,
    ConfigError,
    GuardMode,
    RiskConfig,
    StrategyConfig,
)

SECTIONS = [
    f.name
    for f in dataclasses.fields(StrategyConfig)
    if f.default_factory is not dataclasses.MISSING
]


def _numbers(cls: type) -> list[str]:
    """The fields of a config section that hold numbers (by their defaults)."""
    return [
        f.name
        for f in dataclasses.fields(cls)
        if type(f.default) in (int, float) and not isinstance(f.default, bool)
    ]


NUMBER_PATHS = [
    f"{s}.{name}" for s in SECTIONS for name in _numbers(type(getattr(StrategyConfig(), s)))
] + _numbers(StrategyConfig)
FLAG_PATHS = ["size_proxy.enabled", "execution.slippage_vol_scale", "flip_model"]


# -- the flow's environment -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ENSEMBLE_SEED": "-1"}, "ENSEMBLE_SEED='-1' is invalid: must be an integer >= 0"),
        ({"ENSEMBLE_SEED": "2.5"}, "ENSEMBLE_SEED='2.5' is invalid: must be an integer >= 0"),
        ({"ENSEMBLE_DAYS": "inf"}, "ENSEMBLE_DAYS='inf' is invalid: must be a number >= 0.01"),
        ({"ENSEMBLE_DAYS": "nan"}, "ENSEMBLE_DAYS='nan' is invalid"),
        ({"ENSEMBLE_MAX_JUMP_MS": "59999"}, "ENSEMBLE_MAX_JUMP_MS='59999' is invalid: "),
        ({"ENSEMBLE_READY_STALL_S": "0"}, "ENSEMBLE_READY_STALL_S='0' is invalid: "),
        ({"ENSEMBLE_KAFKA_TAIL": "true"}, "ENSEMBLE_KAFKA_TAIL='true' is invalid: must be 0 or 1"),
        ({"ENSEMBLE_SYMBOLS": "BTC-PERP,*"}, "ENSEMBLE_SYMBOLS='BTC-PERP,*' is invalid: "),
        (
            {"ENSEMBLE_KAFKA_BOOTSTRAP": "h:1,h"},
            "ENSEMBLE_KAFKA_BOOTSTRAP='h:1,h' is invalid: must be host:port[,host:port]",
        ),
    ],
)
def test_a_bad_variable_is_named_with_its_value_and_the_rule(env, message):
    with pytest.raises(ConfigError) as e:
        Settings.from_env(env)
    assert message in str(e.value)


def test_every_bad_variable_is_named_at_once():
    with pytest.raises(ConfigError) as e:
        Settings.from_env({"ENSEMBLE_SEED": "seven", "ENSEMBLE_CLOCK": "lunar"})
    assert "ENSEMBLE_SEED='seven'" in str(e.value) and "ENSEMBLE_CLOCK='lunar'" in str(e.value)


def test_variables_are_text_converted_to_their_types():
    s = Settings.from_env(
        {
            "ENSEMBLE_SEED": "11",
            "ENSEMBLE_DAYS": "2.5",
            "ENSEMBLE_KAFKA_TAIL": "0",
            "ENSEMBLE_SYMBOLS": " BTC-PERP , ETH-PERP ",
            "ENSEMBLE_CANDLE_SYMBOLS": "",
            "ENSEMBLE_READY_PORT": "",  # empty: the default
            "ENSEMBLE_KAFKA_BOOTSTRAP": " 127.0.0.1:1 ",
        }
    )
    assert s.seed == 11 and s.generator is not None and s.generator.days == 2.5
    assert s.kafka_tail is False and s.ready_port == 0
    assert s.symbols == {"BTC-PERP", "ETH-PERP"} and s.candle_symbols == frozenset()
    assert s.kafka_bootstrap == "127.0.0.1:1" and s.wall_clock  # wall with Kafka


def test_an_unknown_variable_is_refused_not_ignored():
    with pytest.raises(ConfigError, match=r"ENSEMBLE_DAYZ \(did you mean ENSEMBLE_DAYS\?\)"):
        Settings.from_env({"ENSEMBLE_DAYZ": "3"})


# -- the strategy config and its overrides ----------------------------------------------------
def test_overrides_given_as_text_are_converted_to_the_fields_types():
    cfg = ENSEMBLE_1_1.with_overrides(
        {
            "risk.pos_max": "0.3",
            "risk.cooldown_bars": "2",
            "gates.consensus_gate": "shadow",
            "size_proxy.enabled": "true",
            "flip_model": "on",
            "warmup_bars": 120.0,
        }
    )
    assert cfg.risk.pos_max == 0.3 and type(cfg.risk.pos_max) is float
    assert cfg.risk.cooldown_bars == 2 and type(cfg.risk.cooldown_bars) is int
    assert cfg.gates.consensus_gate is GuardMode.SHADOW
    assert cfg.size_proxy.enabled is True and cfg.flip_model is True
    assert cfg.warmup_bars == 120 and type(cfg.warmup_bars) is int


@pytest.mark.parametrize("path", NUMBER_PATHS)
@pytest.mark.parametrize("value", [math.nan, math.inf, True, "abc"])
def test_a_number_setting_refuses_nan_inf_a_flag_and_text(path, value):
    with pytest.raises(ConfigError) as e:
        StrategyConfig().with_overrides({path: value})
    assert str(e.value).startswith(f"{path}={value!r} is invalid: ")


@pytest.mark.parametrize("path", FLAG_PATHS)
@pytest.mark.parametrize("value", [5, 0.5, "maybe"])
def test_a_flag_refuses_anything_but_true_or_false(path, value):
    with pytest.raises(ConfigError, match=f"{path}={value!r} is invalid: must be true or false"):
        StrategyConfig().with_overrides({path: value})


def test_an_integer_setting_refuses_a_fraction_and_a_flag():
    for value in (2.5, True):
        with pytest.raises(ConfigError, match=f"cohorts.min_ranked={value!r}"):
            StrategyConfig().with_overrides({"cohorts.min_ranked": value})


def test_stale_intent_bars_is_no_setting_so_a_config_giving_it_stops_the_start():
    """`execution.stale_intent_bars` was validated and never read: an intent is rejected
    when the bar after its decision has no trades, whatever it said (the rule:
    tests/test_decision_core.py, an intent the next bar cannot fill). It is gone, so a
    config that sets it stops the start instead of being silently ignored."""
    with pytest.raises(ConfigError, match="unknown setting 'execution.stale_intent_bars'"):
        StrategyConfig().with_overrides({"execution.stale_intent_bars": 3})


def test_the_configs_own_words_are_kept():
    with pytest.raises(ConfigError) as e:
        StrategyConfig().with_overrides({"risk.vol_guard": "maybe"})
    assert str(e.value) == "risk.vol_guard='maybe' is invalid: must be one of off, on, shadow"
    with pytest.raises(ConfigError) as e:
        StrategyConfig().with_overrides({"execution.dry_run": "false"})
    assert str(e.value) == (
        "execution.dry_run='false' is invalid: live order routing is not implemented; only "
        "paper trading (true) is possible"
    )


def test_a_rule_across_fields_names_the_field_it_is_about():
    with pytest.raises(ConfigError) as e:
        StrategyConfig().with_overrides({"cohorts.min_ranked": 30_000})
    assert str(e.value) == (
        "cohorts.max_addresses=20000 is invalid: must be an integer >= cohorts.min_ranked "
        "(cohorts.min_ranked is 30000)"
    )


def test_a_whole_section_given_as_a_table_is_checked_field_by_field():
    cfg = StrategyConfig().with_overrides({"risk": {"pos_max": "0.25"}})
    assert cfg.risk == RiskConfig(pos_max=0.25)
    with pytest.raises(ConfigError, match=r"^risk\.pos_max=-1 is invalid: must be in \(0, 10\]$"):
        StrategyConfig().with_overrides({"risk": {"pos_max": -1}})


def test_an_unknown_dotted_setting_is_refused_listing_the_known_ones():
    with pytest.raises(ConfigError) as e:
        StrategyConfig().with_overrides({"bandit.epsilom": 0.1})
    assert "unknown setting 'bandit.epsilom'" in str(e.value) and "'epsilon'" in str(e.value)


def test_making_or_replacing_a_config_checks_it_and_raises_config_error():
    with pytest.raises(ConfigError, match=r"^cohorts\.top_frac=0\.9 is invalid"):
        CohortConfig(top_frac=0.9)
    with pytest.raises(ConfigError, match=r"^risk\.pos_max=11 is invalid"):
        dataclasses.replace(RiskConfig(), pos_max=11)


def test_reading_a_field_is_a_plain_attribute_read():
    # configs are read per trade: no validation, property or descriptor on the way
    for name in SECTIONS:
        section = getattr(ENSEMBLE_1_1, name)
        assert type(section).__getattribute__ is object.__getattribute__
        for f in dataclasses.fields(section):
            assert f.name in vars(section)
            assert not hasattr(getattr(type(section), f.name, None), "__get__")


# -- the alerts consumer ----------------------------------------------------------------------
def test_alerts_name_a_bad_file_value_by_file_and_key_and_an_environment_one_by_variable(
    tmp_path: Path,
):
    path = tmp_path / "alerts.json"
    path.write_text(json.dumps({"rate_limit_max": "0"}))
    with pytest.raises(ConfigError) as e:
        load_config({}, path)
    assert str(e.value) == f"{path}: rate_limit_max='0' is invalid: must be an integer >= 1"
    path.write_text(json.dumps({"rate_limit_max": "4"}))
    with pytest.raises(ConfigError) as e:
        load_config({"ENSEMBLE_ALERTS_DEDUP_WINDOW_S": "-1"}, path)
    assert str(e.value) == "ENSEMBLE_ALERTS_DEDUP_WINDOW_S='-1' is invalid: must be seconds >= 0"


def test_alerts_values_from_file_and_environment_are_converted_to_their_types(tmp_path: Path):
    path = tmp_path / "alerts.json"
    path.write_text(json.dumps({"slippage_bps": "12.5", "silence": "error_event:BTC-PERP"}))
    cfg = load_config(
        {"ENSEMBLE_ALERTS_RATE_LIMIT_MAX": "4", "ENSEMBLE_ALERTS_SYMBOLS": "BTC-PERP, ETH-PERP"},
        path,
    )
    assert cfg.slippage_bps == 12.5 and cfg.rate_limit_max == 4
    assert cfg.symbols == ("BTC-PERP", "ETH-PERP")
    assert cfg.silence == (Silence("error_event", "BTC-PERP", None),)


def test_alerts_refuse_unknown_names_in_the_file_and_the_environment(tmp_path: Path):
    path = tmp_path / "alerts.json"
    path.write_text(json.dumps({"slippage": 1}))
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['slippage'\]"):
        load_config({}, path)
    typo = "ENSEMBLE_ALERTS_DRAWDOWN_BRAECH"
    with pytest.raises(ConfigError, match=rf"unknown variable\(s\) \['{typo}'\]"):
        load_config({typo: "0.05"})


def test_the_alerts_error_is_the_error_of_every_other_setting():
    assert AlertsConfigError is ConfigError
    with pytest.raises(AlertsConfigError):
        load_config({"ENSEMBLE_ALERTS_CONSECUTIVE_LOSSES": "true"})
