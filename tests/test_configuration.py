"""One way to configure: the ENSEMBLE_CONFIG TOML file under the environment, one registry
of every command's ENSEMBLE_* settings (typos refused), and `show_config`."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dataflows.environment import add_kafka_arguments, kafka_arguments, known
from dataflows.settings import Settings
from operators.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_a_misspelt_variable_stops_the_start_naming_it_and_the_setting_it_resembles():
    with pytest.raises(ConfigError, match=r"ENSEMBLE_PRSET \(did you mean ENSEMBLE_PRESET\?\)"):
        Settings.from_env({"ENSEMBLE_PRSET": "ensemble_1_0"})


def test_the_flow_knows_the_alerts_settings_and_reads_them_only_when_one_is_set():
    """A deployment may give the flow and the alerts consumer one environment: the alerts'
    names pass and their typos stop the start; a flow without them does not import the
    alerts consumer to check its names (20 ms of its 0.5 s start-up)."""
    Settings.from_env({"ENSEMBLE_ALERTS_SLIPPAGE_BPS": "5"})
    typo = "ENSEMBLE_ALERTS_DRAWDOWN_BRAECH"
    with pytest.raises(
        ConfigError, match=rf"{typo} \(did you mean ENSEMBLE_ALERTS_DRAWDOWN_BREACH"
    ):
        Settings.from_env({typo: "5"})
    code = (
        "import sys; from dataflows.settings import Settings; "
        "Settings.from_env({'ENSEMBLE_SEED': '3'}); print('consumers.alerts' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.stdout.strip() == "False", run.stderr


def test_the_toml_file_sets_values_and_the_environment_overrides_it(tmp_path):
    cfg = tmp_path / "ensemble.toml"
    cfg.write_text(
        'ENSEMBLE_PRESET = "ensemble_1_0"\n'
        "ENSEMBLE_DAYS = 3\n"
        'ENSEMBLE_SYMBOLS = ["BTC-PERP", "ETH-PERP"]\n'
        "[ENSEMBLE_OVERRIDES.risk]\n"
        "pos_max = 0.3\n"
    )
    s = Settings.from_env({"ENSEMBLE_CONFIG": str(cfg), "ENSEMBLE_DAYS": "4"})
    assert s.strategy.strategy_id == "ensemble_1_0"
    assert s.generator is not None and s.generator.days == 4.0  # the environment wins
    assert s.strategy.risk.pos_max == 0.3
    assert s.symbols == {"BTC-PERP", "ETH-PERP"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ENSEMBLE_DAYZ = 3\n", r"ENSEMBLE_DAYZ \(did you mean ENSEMBLE_DAYS\?\) in .*ensemble"),
        ("ENSEMBLE_SEED = -3\n", r"ENSEMBLE_SEED='-3' is invalid: must be an integer >= 0"),
        ("ENSEMBLE_DAYS = \n", r"ENSEMBLE_CONFIG='.*' is not TOML"),
        ("ENSEMBLE_SYMBOLS = [1, 2]\n", r"ENSEMBLE_SYMBOLS = \[1, 2\] must be a string"),
    ],
)
def test_a_bad_file_stops_the_start_naming_the_setting(tmp_path, text, message):
    cfg = tmp_path / "ensemble.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({"ENSEMBLE_CONFIG": str(cfg)})


def test_a_missing_file_is_named():
    with pytest.raises(ConfigError, match=r"ENSEMBLE_CONFIG='/nonexistent.toml' cannot be read"):
        Settings.from_env({"ENSEMBLE_CONFIG": "/nonexistent.toml"})


def test_every_ensemble_variable_the_code_and_deploy_files_use_is_in_the_one_registry():
    """So no command's setting is refused as a typo, and no typo passes as a setting."""
    used: set[str] = set()
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT).parts
        if rel[0] in (".venv", ".git", ".kafka", "out") or not path.is_file():
            continue
        if path.suffix in (".py", ".sh", ".yaml", ".env") or path.name in (
            "Makefile",
            "Dockerfile",
        ):
            used |= set(re.findall(r"\bENSEMBLE_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    presets = {"ENSEMBLE_1_0", "ENSEMBLE_1_1"}  # constants in operators/config.py
    typos = {"ENSEMBLE_PRSET", "ENSEMBLE_DAYZ", "ENSEMBLE_ALERTS_DRAWDOWN_BRAECH"}  # tests'
    prefixes = {"ENSEMBLE_KAFKA_S"}  # a startswith() in a test
    assert used - presets - typos - prefixes - set(known()) == set()


def test_kafka_commands_take_the_bootstrap_from_the_flag_then_the_environment_then_the_file(
    tmp_path, monkeypatch
):
    cfg = tmp_path / "ensemble.toml"
    cfg.write_text('ENSEMBLE_KAFKA_BOOTSTRAP = "file:1"\nENSEMBLE_TOPIC_PREFIX = "fromfile"\n')
    monkeypatch.setenv("ENSEMBLE_CONFIG", str(cfg))
    monkeypatch.delenv("ENSEMBLE_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("ENSEMBLE_TOPIC_PREFIX", raising=False)

    def parsed(*argv: str) -> argparse.Namespace:
        ap = argparse.ArgumentParser()
        add_kafka_arguments(ap)
        args = ap.parse_args(argv)
        kafka_arguments(ap, args)
        return args

    assert (parsed().bootstrap, parsed().prefix) == ("file:1", "fromfile")
    monkeypatch.setenv("ENSEMBLE_KAFKA_BOOTSTRAP", "env:2")
    assert parsed().bootstrap == "env:2"
    assert parsed("--bootstrap", "flag:3", "--prefix", "p").bootstrap == "flag:3"
    cfg.write_text("")
    monkeypatch.delenv("ENSEMBLE_KAFKA_BOOTSTRAP")
    with pytest.raises(SystemExit):
        parsed()


@pytest.mark.parametrize(
    "module", ["dataflows.topics", "dataflows.control", "marketdata.replay", "marketdata.live"]
)
def test_every_kafka_tool_reads_the_bootstrap_the_same_way(module):
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "default: ENSEMBLE_KAFKA_BOOTSTRAP, from the environment or the" in " ".join(
        done.stdout.split()
    )


def test_show_config_says_where_each_value_came_from_and_masks_secrets(tmp_path):
    cfg = tmp_path / "ensemble.toml"
    cfg.write_text(
        'ENSEMBLE_PRESET = "ensemble_1_0"\n'
        'ENSEMBLE_KAFKA_SECURITY_PROTOCOL = "SASL_SSL"\n'
        'ENSEMBLE_KAFKA_SASL_USERNAME = "flow"\n'
        'ENSEMBLE_KAFKA_SASL_PASSWORD = "hunter2-secret"\n'
        'ENSEMBLE_OVERRIDES = { "risk.pos_max" = 0.3 }\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENSEMBLE_")}
    env |= {"ENSEMBLE_CONFIG": str(cfg), "ENSEMBLE_DAYS": "4"}
    done = subprocess.run(
        [sys.executable, "-m", "dataflows.show_config"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines() if line.strip()}
    assert rows["ENSEMBLE_PRESET"][:3] == ["ensemble_1_0", "file", str(cfg)]
    assert rows["ENSEMBLE_DAYS"][:2] == ["4", "environment"]
    assert rows["ENSEMBLE_SEED"][:2] == ["7", "default"]
    assert rows["ENSEMBLE_KAFKA_SASL_PASSWORD"][:2] == ["********", "file"]
    assert "hunter2-secret" not in done.stdout + done.stderr
    assert rows["risk.pos_max"] == ["0.3", "ENSEMBLE_OVERRIDES", "(file", f"{cfg})"]
    assert rows["risk.max_drawdown"][1:] == ["preset", "ensemble_1_0"]
    assert done.stdout.rstrip().endswith("the flow would start with these settings")

    env["ENSEMBLE_SEED"] = "-1"
    bad = subprocess.run(
        [sys.executable, "-m", "dataflows.show_config"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2
    assert (
        "the flow would not start: ENSEMBLE_SEED='-1' is invalid: must be an integer >= 0"
        in bad.stderr
    )


def test_show_config_prints_the_preset_and_the_size_proxy_at_their_defaults():
    """The preset is read by the flow and dataflows.control: it is a flow setting all the
    same, so it is listed when unset; the size proxy's parameters are listed while off."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENSEMBLE_")}
    env.pop("STRATEGY_ID", None)

    def report(**extra: str) -> dict[str, list[str]]:
        done = subprocess.run(
            [sys.executable, "-m", "dataflows.show_config"],
            cwd=ROOT, env=env | extra, capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines() if line}

    rows = report()
    assert rows["ENSEMBLE_PRESET"][:2] == ["ensemble_1_1", "default"]
    assert rows["size_proxy.enabled"] == ["false", "preset", "ensemble_1_1"]
    assert rows["size_proxy.large_quantile"] == ["0.9", "preset", "ensemble_1_1"]
    assert "ENSEMBLE_ALERTS_START" not in rows  # other commands' settings need --all

    by_spec_name = report(STRATEGY_ID="ensemble_1_0")
    assert by_spec_name["ENSEMBLE_PRESET"][:2] == ["(unset)", "default"]
    assert by_spec_name["STRATEGY_ID"][:2] == ["ensemble_1_0", "environment"]
    assert by_spec_name["strategy"] == ["ensemble_1_0:"]
