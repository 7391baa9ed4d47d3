"""Every `ENSEMBLE_*` setting of every command in one registry, an optional TOML file, and
the refusal of names that are not settings.

Why one registry: the flow, the Kafka tools, the consumers, the live ingestor and the
local broker script each read their own variables, and a misspelt one (`ENSEMBLE_PRSET`)
used to be ignored silently. Now any command that starts refuses an `ENSEMBLE_*` name
that no command knows, listing the known ones.

The file: `ENSEMBLE_CONFIG=path.toml` names a TOML file whose keys are the same names as
the environment's, e.g.

    ENSEMBLE_PRESET = "ensemble_1_0"
    ENSEMBLE_KAFKA_BOOTSTRAP = "127.0.0.1:19092"
    ENSEMBLE_OVERRIDES = { "risk.pos_max" = 0.3 }   # a table: written as JSON
    ENSEMBLE_SYMBOLS = ["BTC-PERP", "ETH-PERP"]     # an array: comma-joined

A variable set in the environment overrides the file; a command-line flag (`--bootstrap`)
overrides both. `python -m dataflows.show_config` prints what is in force and where each
value came from. This module only knows names and sources: values are checked where they
are read, one way (operators/validation.py: pydantic dataclasses whose errors name the
setting and the value) for the flow (dataflows/settings.py), the strategy config
(operators/config.py) and the alerts consumer (consumers/alerts.py). pydantic-settings is
not used for this layer: it neither refuses unknown prefixed names nor says where a value
came from.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from operators.config import ConfigError

PREFIX = "ENSEMBLE_"
CONFIG_VAR = "ENSEMBLE_CONFIG"
MASK = "********"


@dataclass(frozen=True)
class Setting:
    name: str
    default: str  # as text; "" when unset by default
    commands: str  # who reads it
    help: str
    secret: bool = False


_FLOW = "flow"
_CLIENTS = "every Kafka client"
_BROKER = "deploy/kafka/broker.sh"

_SETTINGS = (
    Setting(CONFIG_VAR, "", "every command", "TOML file of settings (the environment wins)"),
    # the flow (dataflows/settings.py)
    Setting(
        "ENSEMBLE_PRESET",
        "ensemble_1_1",
        "flow, dataflows.control",
        "strategy preset (or STRATEGY_ID)",
    ),
    Setting("ENSEMBLE_OVERRIDES", "{}", _FLOW, 'JSON of dotted settings, {"risk.pos_max": 0.3}'),
    Setting("ENSEMBLE_INPUT", "generator", _FLOW, "`generator` or file specs KIND:PATH[,..]"),
    Setting("ENSEMBLE_SEED", "7", _FLOW, "generator and bandit seed"),
    Setting("ENSEMBLE_DAYS", "6", _FLOW, "days the generator produces"),
    Setting("ENSEMBLE_SYMBOLS", "", _FLOW, "symbols allowed to trade (default: the input's)"),
    Setting("ENSEMBLE_CANDLE_SYMBOLS", "", _FLOW, "symbols whose bars come from candles"),
    Setting("ENSEMBLE_OUT", "out", _FLOW, "directory of the JSON-lines outputs"),
    Setting("ENSEMBLE_ALLOWED_LATENESS_MS", "5000", _FLOW, "how late a trade may still fold in"),
    Setting("ENSEMBLE_MAX_CLOCK_SKEW_MS", "300000", _FLOW, "how far past the wall clock"),
    Setting("ENSEMBLE_MAX_JUMP_MS", "3600000", _FLOW, "how far past its partition, unconfirmed"),
    Setting("ENSEMBLE_SOURCE_IDLE_MS", "10000", _FLOW, "Kafka: a silent partition stops holding"),
    Setting("ENSEMBLE_MODEL_DIR", "models/artifacts/default", _FLOW, "model artifact"),
    Setting("ENSEMBLE_CLOCK", "event (wall with Kafka)", _FLOW, "event or wall"),
    Setting("ENSEMBLE_KAFKA_TAIL", "1", _FLOW, "0: stop at the end of the input topics"),
    Setting("ENSEMBLE_OPERATOR_KEYS_FILE", "", _FLOW, "JSON file of operators' public keys"),
    Setting("ENSEMBLE_OPERATOR_KEYS_JSON", "", _FLOW, "the same JSON inline"),
    Setting("ENSEMBLE_COMMAND_WINDOW_MS", "900000", _FLOW, "older commands are stale"),
    Setting("ENSEMBLE_KAFKA_DELIVERY_TIMEOUT_MS", "300000", _FLOW, "unacknowledged: stop"),
    Setting("ENSEMBLE_KAFKA_STARTUP_TIMEOUT_S", "60", _FLOW, "wait for broker and topics"),
    Setting("ENSEMBLE_READY_PORT", "0", _FLOW, "serve GET /ready on this port (0: off)"),
    Setting("ENSEMBLE_READY_STALL_S", "120", _FLOW, "/ready fails after this long stalled"),
    Setting("ENSEMBLE_STATUS_INTERVAL_S", "15", _FLOW, "seconds between status lines (0: off)"),
    # every Kafka client (dataflows/kafka_security.py; the tools' --bootstrap default)
    Setting("ENSEMBLE_KAFKA_BOOTSTRAP", "", _CLIENTS, "brokers host:port[,..]"),
    Setting("ENSEMBLE_TOPIC_PREFIX", "ensemble", _CLIENTS, "topics are PREFIX.<stream>"),
    Setting("ENSEMBLE_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", _CLIENTS, "or SASL_SSL, SSL"),
    Setting("ENSEMBLE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512", _CLIENTS, "or SCRAM-SHA-256"),
    Setting("ENSEMBLE_KAFKA_SASL_USERNAME", "", _CLIENTS, "this component's principal"),
    Setting("ENSEMBLE_KAFKA_SASL_PASSWORD", "", _CLIENTS, "its password", secret=True),
    Setting("ENSEMBLE_KAFKA_SASL_PASSWORD_FILE", "", _CLIENTS, "a file holding it"),
    Setting("ENSEMBLE_KAFKA_SSL_CA", "", _CLIENTS, "PEM file of the broker's CA"),
    Setting("ENSEMBLE_LOG_LEVEL", "INFO (copilot: WARNING)", "alerts, copilot", "log level"),
    # operator commands (dataflows/control.py)
    Setting("ENSEMBLE_OPERATOR_KEY_FILE", "", "control", "file with the Ed25519 private key"),
    Setting("ENSEMBLE_OPERATOR_KEY", "", "control", "the private key, base64", secret=True),
    # copilot's language model (consumers/llm.py)
    Setting("ENSEMBLE_LLM_BASE_URL", "", "copilot", "OpenAI-compatible endpoint (unset: none)"),
    Setting("ENSEMBLE_LLM_MODEL", "", "copilot", "model name at that endpoint"),
    Setting("ENSEMBLE_LLM_API_KEY", "", "copilot", "sent as a bearer token", secret=True),
    Setting("ENSEMBLE_LLM_TIMEOUT_S", "60", "copilot", "seconds for the whole answer"),
    # deployment (deploy/k8s settings.env)
    Setting("ENSEMBLE_TOPIC_REPLICATION", "1", "topics (Kubernetes job)", "replication factor"),
    Setting("ENSEMBLE_LIVE_VENUE", "", "live (Kubernetes ingestor)", "hyperliquid or binance"),
    # the local test broker and the tests (deploy/kafka/README.md)
    Setting("ENSEMBLE_KAFKA_PORT", "19092", _BROKER, "client port"),
    Setting("ENSEMBLE_KAFKA_CONTROLLER_PORT", "19093", _BROKER, "controller port"),
    Setting("ENSEMBLE_KAFKA_SECURITY", "sasl_ssl", _BROKER, "sasl_ssl or plaintext"),
    Setting("ENSEMBLE_KAFKA_HOME", "~/.cache/ensemble-kafka", _BROKER, "classpath cache"),
    Setting("ENSEMBLE_KAFKA_STATE", "<repo>/.kafka", _BROKER, "config, data, logs, pid"),
    Setting("ENSEMBLE_KAFKA_KEEP_DATA", "0", _BROKER, "1 keeps the data across starts"),
    Setting("ENSEMBLE_KAFKA_START_TIMEOUT", "90", _BROKER, "seconds to wait for readiness"),
    Setting("ENSEMBLE_KAFKA_STOP_TIMEOUT", "30", _BROKER, "seconds before SIGKILL"),
    Setting("ENSEMBLE_KAFKA_HEAP_OPTS", "-Xms512m -Xmx512m", _BROKER, "JVM heap"),
    Setting("ENSEMBLE_KAFKA_JAVA_OPTS", "", _BROKER, "more JVM options"),
    Setting("ENSEMBLE_KAFKA_JAVA", "java", _BROKER, "the java binary"),
    Setting("ENSEMBLE_KAFKA_MVN", "mvn", _BROKER, "the mvn binary"),
    Setting("ENSEMBLE_KAFKA_PYTHON", "", _BROKER, "python with confluent-kafka (readiness)"),
    Setting("ENSEMBLE_TEST_KAFKA", "", "tests", "the test broker's bootstrap"),
    Setting("ENSEMBLE_TEST_KAFKA_SECURITY", "", "tests", "the test broker's security"),
    Setting("ENSEMBLE_TEST_KAFKA_STATE", "", "tests", "the test broker's state directory"),
)


def _alerts_settings() -> tuple[Setting, ...]:
    """ENSEMBLE_ALERTS_<FIELD> for every field of the alerts config (consumers/alerts.py)."""
    import dataclasses

    from consumers.alerts import CONFIG_ENV, ENV_PREFIX, AlertsConfig

    out = [Setting(CONFIG_ENV, "", "alerts", "JSON file of alerts settings")]
    for f in dataclasses.fields(AlertsConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
        out.append(Setting(ENV_PREFIX + f.name.upper(), text, "alerts", f"AlertsConfig.{f.name}"))
    return tuple(out)


def known() -> dict[str, Setting]:
    """Every known setting by name."""
    return {s.name: s for s in (*_SETTINGS, *_alerts_settings())}


@dataclass(frozen=True)
class Resolved:
    """The settings in force: the environment over the file; where each value came from."""

    values: dict[str, str]
    sources: dict[str, str]  # name -> "environment" or "file PATH"
    file: Path | None


_BASE_NAMES = frozenset(s.name for s in _SETTINGS)


def _refuse_unknown(names: list[str], where: str) -> None:
    """The alerts' names need the alerts consumer imported (20 ms of a flow's 0.5 s start-up):
    only when a name is not one of the others."""
    if all(n in _BASE_NAMES for n in names):
        return
    registry = known()
    unknown = sorted(n for n in names if n not in registry)
    if unknown:
        guesses = {n: difflib.get_close_matches(n, registry, n=1) for n in unknown}
        named = ", ".join(n + (f" (did you mean {g[0]}?)" if g else "") for n, g in guesses.items())
        raise ConfigError(
            f"unknown setting(s) {named} {where}; known settings: "
            f"{', '.join(sorted(registry))} (python -m dataflows.show_config --all says what "
            "each does)"
        )


def dotted(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested table as dotted keys: {"risk": {"pos_max": 0.3}} -> {"risk.pos_max": 0.3}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= dotted(v, f"{prefix}{k}.")
        else:
            out[prefix + k] = v
    return out


def _as_text(name: str, value: object, path: Path) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, dict):  # ENSEMBLE_OVERRIDES: a table, nested or with dotted keys
        return json.dumps(dotted(value))
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    raise ConfigError(f"{path}: {name} = {value!r} must be a string, number, table or list")


def resolve(env: Mapping[str, str] | None = None) -> Resolved:
    """The environment (default os.environ) over the ENSEMBLE_CONFIG file, with every
    `ENSEMBLE_*` name checked against the registry (ConfigError names the unknown ones)."""
    env = os.environ if env is None else env
    _refuse_unknown([k for k in env if k.startswith(PREFIX)], "in the environment")
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    raw_path = env.get(CONFIG_VAR, "").strip()
    path = Path(raw_path) if raw_path else None
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except OSError as e:
            raise ConfigError(f"{CONFIG_VAR}={raw_path!r} cannot be read: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{CONFIG_VAR}={raw_path!r} is not TOML: {e}") from None
        _refuse_unknown(list(data), f"in {path}")
        if CONFIG_VAR in data:
            raise ConfigError(f"{path}: {CONFIG_VAR} cannot name another file")
        for name, value in data.items():
            values[name] = _as_text(name, value, path)
            sources[name] = f"file {path}"
    for name, value in env.items():
        if name.startswith(PREFIX) or name == "STRATEGY_ID":
            values[name] = value
            sources[name] = "environment"
    return Resolved(values, sources, path)


def environ(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default os.environ) with the file's settings under it: what commands read."""
    env = os.environ if env is None else env
    return {**env, **resolve(env).values}


def add_kafka_arguments(ap: argparse.ArgumentParser) -> None:
    """--bootstrap and --prefix, the same for every Kafka command (see kafka_arguments)."""
    ap.add_argument(
        "--bootstrap",
        help="Kafka host:port[,host:port] (default: ENSEMBLE_KAFKA_BOOTSTRAP, from the "
        "environment or the ENSEMBLE_CONFIG file)",
    )
    ap.add_argument("--prefix", help="topic prefix (default: ENSEMBLE_TOPIC_PREFIX, else ensemble)")


def kafka_arguments(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill in args.bootstrap and args.prefix: the flag, else the environment, else the
    file. A missing broker or a bad setting ends the command with its usage and why."""
    try:
        env = environ()
    except ConfigError as e:
        ap.error(str(e))
    args.bootstrap = args.bootstrap or env.get("ENSEMBLE_KAFKA_BOOTSTRAP", "").strip() or None
    if args.bootstrap is None:
        ap.error(
            "no Kafka broker: pass --bootstrap HOST:PORT or set ENSEMBLE_KAFKA_BOOTSTRAP (in "
            "the environment or the ENSEMBLE_CONFIG file)"
        )
    args.prefix = args.prefix or env.get("ENSEMBLE_TOPIC_PREFIX", "").strip() or "ensemble"


def shown(name: str, value: str) -> str:
    """A value as it may be printed: secrets masked."""
    setting = known().get(name)
    return MASK if setting is not None and setting.secret and value else value
