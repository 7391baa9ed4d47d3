"""Run settings from the environment (prefix ENSEMBLE_), validated before the flow starts.

A bad value stops the start with a message naming the variable and the value. The same
names can be set in a TOML file named by ENSEMBLE_CONFIG (the environment overrides it);
`python -m dataflows.show_config` prints what is in force and where each value came from.

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
from dataclasses import dataclass
from pathlib import Path

from dataflows.environment import environ
from dataflows.kafka_security import KafkaSecurity
from marketdata.files import FileSpec, FileSpecError
from marketdata.generator import GeneratorConfig
from operators.commands import DEFAULT_WINDOW_MS, OperatorKeys
from operators.config import ConfigError, StrategyConfig, preset
from operators.market import DEFAULT_ALLOWED_LATENESS_MS, DEFAULT_MAX_JUMP_MS
from operators.predict import DEFAULT_ARTIFACT
from operators.watermark import DEFAULT_SOURCE_IDLE_MS


@dataclass(frozen=True)
class Settings:
    strategy: StrategyConfig
    generator: GeneratorConfig | None  # None when reading files
    files: tuple[FileSpec, ...]
    symbols: frozenset[str]
    candle_symbols: frozenset[str]
    out_dir: Path
    seed: int
    allowed_lateness_ms: int = DEFAULT_ALLOWED_LATENESS_MS
    max_clock_skew_ms: int = 300_000
    max_jump_ms: int = DEFAULT_MAX_JUMP_MS
    source_idle_ms: int = DEFAULT_SOURCE_IDLE_MS
    model_dir: Path = DEFAULT_ARTIFACT
    wall_clock: bool = False
    kafka_bootstrap: str | None = None
    topic_prefix: str = "ensemble"
    kafka_tail: bool = True
    kafka_security: KafkaSecurity = KafkaSecurity()
    kafka_delivery_timeout_ms: int = 300_000
    kafka_startup_timeout_s: int = 60
    operator_keys: OperatorKeys = OperatorKeys()
    ready_port: int = 0
    ready_stall_s: int = 120
    command_window_ms: int = DEFAULT_WINDOW_MS
    status_interval_s: int = 15

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """From `env` (default os.environ) over the ENSEMBLE_CONFIG file; an `ENSEMBLE_*`
        name that is no command's setting is refused (dataflows/environment.py)."""
        env = environ(env)
        bootstrap = env.get("ENSEMBLE_KAFKA_BOOTSTRAP", "").strip() or None
        if bootstrap is not None and not all(
            h.rpartition(":")[2].isdigit() and h.rpartition(":")[0] for h in bootstrap.split(",")
        ):
            raise ConfigError(
                f"ENSEMBLE_KAFKA_BOOTSTRAP={bootstrap!r} must be host:port[,host:port]"
            )
        prefix = env.get("ENSEMBLE_TOPIC_PREFIX", "ensemble")
        if not prefix or not all(c.isalnum() or c in "._-" for c in prefix):
            raise ConfigError(f"ENSEMBLE_TOPIC_PREFIX={prefix!r} may use letters, digits, . _ -")
        tail = env.get("ENSEMBLE_KAFKA_TAIL", "1")
        if tail not in ("0", "1"):
            raise ConfigError(f"ENSEMBLE_KAFKA_TAIL={tail!r} must be 0 or 1")
        name = env.get("ENSEMBLE_PRESET") or env.get("STRATEGY_ID") or "ensemble_1_1"
        strategy = preset(name)
        raw_overrides = env.get("ENSEMBLE_OVERRIDES", "").strip()
        if raw_overrides:
            try:
                overrides = json.loads(raw_overrides)
            except json.JSONDecodeError as e:
                raise ConfigError(
                    f"ENSEMBLE_OVERRIDES={raw_overrides!r} is not JSON: {e}"
                ) from None
            if not isinstance(overrides, dict):
                raise ConfigError(f"ENSEMBLE_OVERRIDES={raw_overrides!r} must be a JSON object")
            strategy = strategy.with_overrides(overrides)

        seed = _int(env, "ENSEMBLE_SEED", 7, lo=0)
        source = env.get("ENSEMBLE_INPUT", "generator").strip()
        generator: GeneratorConfig | None = None
        files: tuple[FileSpec, ...] = ()
        if source == "generator":
            days = _float(env, "ENSEMBLE_DAYS", GeneratorConfig.days, lo=0.01)
            generator = GeneratorConfig(seed=seed, days=days)
            symbols = set(generator.symbols)
            candle_symbols = set(generator.candle_symbols)
        else:
            try:
                files = tuple(FileSpec.parse(s.strip()) for s in source.split(",") if s.strip())
            except FileSpecError as e:
                raise ConfigError(f"ENSEMBLE_INPUT: {e}") from None
            if not files:
                raise ConfigError(f"ENSEMBLE_INPUT={source!r} names no file")
            symbols = {f.symbol for f in files}
            candle_symbols = {f.symbol for f in files if f.kind == "candles"}
        symbols = _symbol_set(env, "ENSEMBLE_SYMBOLS", symbols)
        candle_symbols = _symbol_set(env, "ENSEMBLE_CANDLE_SYMBOLS", candle_symbols)
        if not candle_symbols <= symbols:
            raise ConfigError(
                f"ENSEMBLE_CANDLE_SYMBOLS={sorted(candle_symbols)} must be a subset "
                f"of the traded symbols {sorted(symbols)}"
            )
        clock = env.get("ENSEMBLE_CLOCK", "wall" if bootstrap else "event")
        if clock not in ("event", "wall"):
            raise ConfigError(f"ENSEMBLE_CLOCK={clock!r} must be event or wall")
        model_dir = Path(env.get("ENSEMBLE_MODEL_DIR", str(DEFAULT_ARTIFACT)))
        operator_keys = _operator_keys(env)
        try:
            security = KafkaSecurity.from_env(env)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return cls(
            strategy=strategy,
            generator=generator,
            files=files,
            symbols=frozenset(symbols),
            candle_symbols=frozenset(candle_symbols),
            out_dir=Path(env.get("ENSEMBLE_OUT", "out")),
            seed=seed,
            allowed_lateness_ms=_int(
                env, "ENSEMBLE_ALLOWED_LATENESS_MS", DEFAULT_ALLOWED_LATENESS_MS, lo=0
            ),
            max_clock_skew_ms=_int(env, "ENSEMBLE_MAX_CLOCK_SKEW_MS", 300_000, lo=0),
            max_jump_ms=_int(env, "ENSEMBLE_MAX_JUMP_MS", DEFAULT_MAX_JUMP_MS, lo=60_000),
            source_idle_ms=_int(env, "ENSEMBLE_SOURCE_IDLE_MS", DEFAULT_SOURCE_IDLE_MS, lo=0),
            model_dir=model_dir,
            wall_clock=clock == "wall",
            kafka_bootstrap=bootstrap,
            topic_prefix=prefix,
            kafka_tail=tail == "1",
            kafka_security=security,
            kafka_delivery_timeout_ms=_int(
                env, "ENSEMBLE_KAFKA_DELIVERY_TIMEOUT_MS", 300_000, lo=1_000
            ),
            kafka_startup_timeout_s=_int(env, "ENSEMBLE_KAFKA_STARTUP_TIMEOUT_S", 60, lo=1),
            operator_keys=operator_keys,
            ready_port=_int(env, "ENSEMBLE_READY_PORT", 0, lo=0),
            ready_stall_s=_int(env, "ENSEMBLE_READY_STALL_S", 120, lo=1),
            command_window_ms=_int(env, "ENSEMBLE_COMMAND_WINDOW_MS", DEFAULT_WINDOW_MS, lo=1_000),
            status_interval_s=_int(env, "ENSEMBLE_STATUS_INTERVAL_S", 15, lo=0),
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


def _int(env: Mapping[str, str], name: str, default: int, lo: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} must be an integer") from None
    if v < lo:
        raise ConfigError(f"{name}={raw!r} must be >= {lo}")
    return v


def _float(env: Mapping[str, str], name: str, default: float, lo: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} must be a number") from None
    if not v >= lo:
        raise ConfigError(f"{name}={raw!r} must be >= {lo}")
    return v


def _symbol_set(env: Mapping[str, str], name: str, default: set[str]) -> set[str]:
    raw = env.get(name)
    if raw is None:
        return default
    syms = {s.strip() for s in raw.split(",") if s.strip()}
    bad = [s for s in syms if not s.replace("-", "").replace("_", "").isalnum() or s == "*"]
    if bad:
        raise ConfigError(f"{name}={raw!r}: invalid symbol(s) {bad}")
    return syms
