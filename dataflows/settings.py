"""Run settings from the environment (prefix ENSEMBLE_), validated before the flow starts.

A bad value stops the start with a message naming the variable, the value and the rule
(pydantic checks it; operators/validation.py, the same for every config, words it). The
same names can be set in a TOML file named by ENSEMBLE_CONFIG (the environment overrides
it); `python -m dataflows.show_config` prints what is in force and where each value came
from.

| variable | default | meaning |
|---|---|---|
| ENSEMBLE_PRESET (or STRATEGY_ID) | ensemble_1_1 | strategy preset |
| ENSEMBLE_OVERRIDES | {} | JSON of dotted settings, e.g. {"risk.pos_max": 0.3} |
| ENSEMBLE_INPUT | generator | `generator`, or comma-separated file specs KIND:PATH[?symbol=..&volume=quote] |
| ENSEMBLE_SEED | 7 | generator and bandit seed |
| ENSEMBLE_DAYS | 6 | days the generator produces |
| ENSEMBLE_SYMBOLS | from the input | symbols allowed to trade; others are dead letters |
| ENSEMBLE_CANDLE_SYMBOLS | from the input | symbols whose bars come from candles, not trades |
| ENSEMBLE_OUT | out | directory of the JSON-lines outputs |
| ENSEMBLE_ALLOWED_LATENESS_MS | 5000 | how late a trade may be and still fold into its bar |
| ENSEMBLE_MAX_CLOCK_SKEW_MS | 300000 | how far past the wall clock an event time may be |
| ENSEMBLE_MAX_JUMP_MS | 3600000 | how far past its partition's progress a trade may jump unconfirmed |
| ENSEMBLE_SOURCE_IDLE_MS | 10000 | Kafka: an input partition silent this long (wall time) no longer holds bars back |
| ENSEMBLE_MODEL_DIR | models/artifacts/default | model artifact |
| ENSEMBLE_CLOCK | event (wall with Kafka) | `event`: ts_init = ts_event (reproducible); `wall`: wall clock |
| ENSEMBLE_KAFKA_BOOTSTRAP | (unset) | Kafka brokers host:port[,..]: read and write Kafka, not files |
| ENSEMBLE_TOPIC_PREFIX | ensemble | topics are PREFIX.trades, PREFIX.orders, ... (dataflows/topics.py) |
| ENSEMBLE_KAFKA_TAIL | 1 | 0: stop at the end of the input topics (a replay with an end) |
| ENSEMBLE_OPERATOR_KEYS_FILE | (none: every command refused) | JSON file {"operator": "<base64 Ed25519 public key>"} of who may sign commands |
| ENSEMBLE_OPERATOR_KEYS_JSON | (unset) | the same JSON inline (instead of the file) |
| ENSEMBLE_COMMAND_WINDOW_MS | 900000 | a command further than this from its symbol's latest event time is stale |
| ENSEMBLE_KAFKA_DELIVERY_TIMEOUT_MS | 300000 | an output message unacknowledged this long stops the flow (before the next snapshot) |
| ENSEMBLE_READY_PORT | 0 (off) | with Kafka: serve GET /ready (broker answers, input topics exist, input progresses) |
| ENSEMBLE_READY_STALL_S | 120 | /ready fails when messages wait and nothing was read for this long |
| ENSEMBLE_KAFKA_STARTUP_TIMEOUT_S | 60 | how long the start waits for the broker and the input topics |
| ENSEMBLE_STATUS_INTERVAL_S | 15 | seconds between status lines on stderr (0: none) |
| ENSEMBLE_KAFKA_SECURITY_PROTOCOL, ..._SASL_USERNAME, ..._SASL_PASSWORD(_FILE), ..._SSL_CA | PLAINTEXT | how the flow authenticates (dataflows/kafka_security.py) |
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field
from pydantic_core import PydanticUseDefault

from dataflows.environment import environ
from dataflows.kafka_security import KafkaSecurity
from marketdata.files import FileSpec, FileSpecError
from marketdata.generator import GeneratorConfig
from operators.commands import DEFAULT_WINDOW_MS, OperatorKeys
from operators.config import ConfigError, StrategyConfig, preset
from operators.market import DEFAULT_ALLOWED_LATENESS_MS, DEFAULT_MAX_JUMP_MS
from operators.predict import DEFAULT_ARTIFACT
from operators.validation import (
    CommaSeparated,
    Integer,
    NonNegativeInt,
    Number,
    PositiveInt,
    named_in,
    validated,
    variables,
)
from operators.watermark import DEFAULT_SOURCE_IDLE_MS

VARIABLE = variables("ENSEMBLE_")  # the field `seed` is the variable ENSEMBLE_SEED


def _blank_is_default(v: Any) -> Any:
    if v == "":
        raise PydanticUseDefault()
    return v


def _valid_symbols(symbols: frozenset[str] | None) -> frozenset[str] | None:
    bad = sorted(s for s in symbols or () if not s.replace("-", "").replace("_", "").isalnum())
    if bad:
        raise ValueError(f"not symbols: {bad}")
    return symbols


def _stripped(v: Any) -> Any:
    return (v.strip() or None) if isinstance(v, str) else v


Blank = BeforeValidator(_blank_is_default)  # an empty number variable means its default
Count = Annotated[NonNegativeInt, Blank]
AtLeastOne = Annotated[PositiveInt, Blank]
AtLeast1000 = Annotated[Integer, Field(ge=1_000, description="must be an integer >= 1000"), Blank]
Symbols = Annotated[
    frozenset[str] | None,  # None: the input's
    CommaSeparated,
    AfterValidator(_valid_symbols),
    Field(description="must be comma-separated symbols like BTC-PERP"),
]


@validated(VARIABLE)
class _Environment:
    """The flow's values as the environment (or the ENSEMBLE_CONFIG file) gives them, as
    text, checked and converted; the other variables are read in `Settings.from_env`."""

    seed: Count = 7
    days: Annotated[Number, Field(ge=0.01, description="must be a number >= 0.01"), Blank] = (
        GeneratorConfig.days
    )
    symbols: Symbols = None
    candle_symbols: Symbols = None
    allowed_lateness_ms: Count = DEFAULT_ALLOWED_LATENESS_MS
    max_clock_skew_ms: Count = 300_000
    max_jump_ms: Annotated[
        Integer, Field(ge=60_000, description="must be an integer >= 60000"), Blank
    ] = DEFAULT_MAX_JUMP_MS
    source_idle_ms: Count = DEFAULT_SOURCE_IDLE_MS
    clock: Annotated[
        Literal["event", "wall"] | None, Field(description="must be event or wall")
    ] = None  # None: wall with Kafka, else event
    kafka_bootstrap: Annotated[
        Annotated[str, Field(pattern=r"^[^,]+:\d+(,[^,]+:\d+)*$")] | None,
        BeforeValidator(_stripped),
        Field(description="must be host:port[,host:port]"),
    ] = None
    topic_prefix: Annotated[
        str, Field(pattern=r"^[\w.-]+$", description="may use letters, digits, . _ -")
    ] = "ensemble"
    kafka_tail: Annotated[Literal["0", "1"], Field(description="must be 0 or 1")] = "1"
    kafka_delivery_timeout_ms: AtLeast1000 = 300_000
    kafka_startup_timeout_s: AtLeastOne = 60
    ready_port: Count = 0
    ready_stall_s: AtLeastOne = 120
    command_window_ms: AtLeast1000 = DEFAULT_WINDOW_MS
    status_interval_s: Count = 15


_FIELDS = tuple(f.name for f in fields(_Environment))


@dataclass(frozen=True)
class Settings:
    """What the flow runs with, made by `from_env` (the defaults are _Environment's)."""

    strategy: StrategyConfig
    generator: GeneratorConfig | None  # None when reading files
    files: tuple[FileSpec, ...]
    symbols: frozenset[str]
    candle_symbols: frozenset[str]
    out_dir: Path
    seed: int
    allowed_lateness_ms: int
    max_clock_skew_ms: int
    max_jump_ms: int
    source_idle_ms: int
    model_dir: Path
    wall_clock: bool
    kafka_bootstrap: str | None
    topic_prefix: str
    kafka_tail: bool
    kafka_security: KafkaSecurity
    kafka_delivery_timeout_ms: int
    kafka_startup_timeout_s: int
    operator_keys: OperatorKeys
    ready_port: int
    ready_stall_s: int
    command_window_ms: int
    status_interval_s: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """From `env` (default os.environ) over the ENSEMBLE_CONFIG file; an `ENSEMBLE_*`
        name that is no command's setting is refused (dataflows/environment.py)."""
        env = environ(env)
        given = _Environment(**named_in(env, _FIELDS, VARIABLE))
        strategy = strategy_from_env(env)

        source = env.get("ENSEMBLE_INPUT", "generator").strip()
        generator: GeneratorConfig | None = None
        files: tuple[FileSpec, ...] = ()
        if source == "generator":
            generator = GeneratorConfig(seed=given.seed, days=given.days)
            symbols = frozenset(generator.symbols)
            candle_symbols = frozenset(generator.candle_symbols)
        else:
            try:
                files = tuple(FileSpec.parse(s.strip()) for s in source.split(",") if s.strip())
            except FileSpecError as e:
                raise ConfigError(f"ENSEMBLE_INPUT: {e}") from None
            if not files:
                raise ConfigError(f"ENSEMBLE_INPUT={source!r} names no file")
            symbols = frozenset(f.symbol for f in files)
            candle_symbols = frozenset(f.symbol for f in files if f.kind == "candles")
        if given.symbols is not None:
            symbols = given.symbols
        if given.candle_symbols is not None:
            candle_symbols = given.candle_symbols
        if not candle_symbols <= symbols:
            raise ConfigError(
                f"ENSEMBLE_CANDLE_SYMBOLS={sorted(candle_symbols)} must be a subset "
                f"of the traded symbols {sorted(symbols)}"
            )
        clock = given.clock or ("wall" if given.kafka_bootstrap else "event")
        try:
            security = KafkaSecurity.from_env(env)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return cls(
            strategy=strategy,
            generator=generator,
            files=files,
            symbols=symbols,
            candle_symbols=candle_symbols,
            out_dir=Path(env.get("ENSEMBLE_OUT", "out")),
            seed=given.seed,
            allowed_lateness_ms=given.allowed_lateness_ms,
            max_clock_skew_ms=given.max_clock_skew_ms,
            max_jump_ms=given.max_jump_ms,
            source_idle_ms=given.source_idle_ms,
            model_dir=Path(env.get("ENSEMBLE_MODEL_DIR", str(DEFAULT_ARTIFACT))),
            wall_clock=clock == "wall",
            kafka_bootstrap=given.kafka_bootstrap,
            topic_prefix=given.topic_prefix,
            kafka_tail=given.kafka_tail == "1",
            kafka_security=security,
            kafka_delivery_timeout_ms=given.kafka_delivery_timeout_ms,
            kafka_startup_timeout_s=given.kafka_startup_timeout_s,
            operator_keys=_operator_keys(env),
            ready_port=given.ready_port,
            ready_stall_s=given.ready_stall_s,
            command_window_ms=given.command_window_ms,
            status_interval_s=given.status_interval_s,
        )


def _operator_keys(env: Mapping[str, str]) -> OperatorKeys:
    """The public keys of the operators allowed to sign commands (none: all refused)."""
    inline = env.get("ENSEMBLE_OPERATOR_KEYS_JSON", "").strip()
    path = env.get("ENSEMBLE_OPERATOR_KEYS_FILE", "").strip()
    try:
        if inline:
            return OperatorKeys.from_json(inline, "ENSEMBLE_OPERATOR_KEYS_JSON")
        if path:
            try:
                text = Path(path).read_text()
            except OSError as e:
                raise ValueError(
                    f"ENSEMBLE_OPERATOR_KEYS_FILE={path!r} cannot be read: {e.strerror}"
                ) from None
            return OperatorKeys.from_json(text, f"ENSEMBLE_OPERATOR_KEYS_FILE={path!r}")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return OperatorKeys()


def strategy_from_env(env: Mapping[str, str]) -> StrategyConfig:
    """The strategy config the flow runs: ENSEMBLE_PRESET (or STRATEGY_ID, default
    ensemble_1_1) with ENSEMBLE_OVERRIDES on it (the operator command line signs for its
    `strategy_id`, so it reads it the same way)."""
    name = env.get("ENSEMBLE_PRESET") or env.get("STRATEGY_ID") or "ensemble_1_1"
    strategy = preset(name)
    raw_overrides = env.get("ENSEMBLE_OVERRIDES", "").strip()
    if raw_overrides:
        try:
            overrides = json.loads(raw_overrides)
        except json.JSONDecodeError as e:
            raise ConfigError(f"ENSEMBLE_OVERRIDES={raw_overrides!r} is not JSON: {e}") from None
        if not isinstance(overrides, dict):
            raise ConfigError(f"ENSEMBLE_OVERRIDES={raw_overrides!r} must be a JSON object")
        strategy = strategy.with_overrides(overrides)
    return strategy
