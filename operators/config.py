"""Strategy configuration: one frozen, validated object per component, and the presets.

Numbers from the specification appear here once, under the names it uses. Ensemble 1.0
and 1.1 are named values of `StrategyConfig`; every 1.1 change is its own switch, and
each new guard has a shadow mode (log what it would have vetoed, trade anyway).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A configuration value is wrong; the message names it and says what is allowed."""


class GuardMode(enum.StrEnum):
    OFF = "off"
    ON = "on"
    SHADOW = "shadow"  # evaluate, emit "would have vetoed", trade anyway


def _check(cond: bool, name: str, value: Any, rule: str) -> None:
    if not cond:
        raise ConfigError(f"{name}={value!r} is invalid: {rule}")


def _unit(name: str, v: float) -> None:
    _check(isinstance(v, (int, float)) and 0.0 <= v <= 1.0, name, v, "must be in [0, 1]")


def _positive(name: str, v: float) -> None:
    _check(isinstance(v, (int, float)) and math.isfinite(v) and v > 0, name, v, "must be > 0")


@dataclass(frozen=True)
class Thresholds:
    S_MIN: float = 0.12  # min |cohort signal| for a cohort arm
    CONF_MIN: float = 0.60  # min model confidence for a model arm
    ALPHA_MIN: float = 0.10  # min model edge for a model arm

    def __post_init__(self) -> None:
        _unit("thresholds.S_MIN", self.S_MIN)
        _check(
            0.5 <= self.CONF_MIN <= 1.0,
            "thresholds.CONF_MIN",
            self.CONF_MIN,
            "must be in [0.5, 1] (confidence is max(p_up, p_down))",
        )
        _unit("thresholds.ALPHA_MIN", self.ALPHA_MIN)


@dataclass(frozen=True)
class CohortConfig:
    top_frac: float = 0.10  # share of ranked addresses in each of the top and bottom cohorts
    min_ranked: int = 20  # addresses with a skill score before cohorts exist
    flow_halflife_bars: float = 6.0  # smoothing of cohort flow
    skill_halflife_bars: float = 288.0  # memory of an address's skill (1 day of 5m bars)
    stale_intervals: float = 2.0  # an external cohort snapshot older than this many 5m bars
    max_addresses: int = 20_000  # address table cap; the smallest |skill| is evicted first

    def __post_init__(self) -> None:
        _check(0 < self.top_frac <= 0.5, "cohorts.top_frac", self.top_frac, "must be in (0, 0.5]")
        _check(
            isinstance(self.max_addresses, int) and self.max_addresses >= self.min_ranked,
            "cohorts.max_addresses",
            self.max_addresses,
            "must be an integer >= cohorts.min_ranked",
        )
        _check(
            isinstance(self.min_ranked, int) and self.min_ranked >= 2,
            "cohorts.min_ranked",
            self.min_ranked,
            "must be an integer >= 2",
        )
        _positive("cohorts.flow_halflife_bars", self.flow_halflife_bars)
        _positive("cohorts.skill_halflife_bars", self.skill_halflife_bars)
        _positive("cohorts.stale_intervals", self.stale_intervals)


@dataclass(frozen=True)
class SizeProxyConfig:
    """The trade-size cohort proxy (operators/size_proxy.py) for trades without addresses.

    Off by default: the presets' outputs stay as they were. `large_quantile` was set before
    any measurement (the top decile of prints, as `cohorts.top_frac` takes the top decile
    of addresses) and is not tuned on results."""

    enabled: bool = False
    large_quantile: float = 0.90  # a print at or above this quantile of earlier prints is large
    size_halflife_bars: float = 288.0  # memory of the print-size distribution (1 day of 5m)
    min_prints: int = 1000  # earlier prints needed before any print is classified

    def __post_init__(self) -> None:
        _check(
            isinstance(self.enabled, bool), "size_proxy.enabled", self.enabled, "must be a boolean"
        )
        _check(
            isinstance(self.large_quantile, (int, float)) and 0 < self.large_quantile < 1,
            "size_proxy.large_quantile",
            self.large_quantile,
            "must be in (0, 1)",
        )
        _positive("size_proxy.size_halflife_bars", self.size_halflife_bars)
        _check(
            isinstance(self.min_prints, int) and self.min_prints >= 1,
            "size_proxy.min_prints",
            self.min_prints,
            "must be an integer >= 1",
        )


@dataclass(frozen=True)
class BandConfig:
    """How far a trade may lie from the recent reference before it is an outlier
    (operators/bands.py): its price from the median of the symbol's recent trade prices,
    its size from the median of their sizes."""

    max_price_deviation: float = 0.10  # |px / reference - 1|; 0.10 = 10 %
    max_size_multiple: float = 100_000.0  # qty / reference qty (real perps reach ~3,000)

    def __post_init__(self) -> None:
        _check(
            isinstance(self.max_price_deviation, (int, float))
            and 0 < self.max_price_deviation < 10,
            "bands.max_price_deviation",
            self.max_price_deviation,
            "must be a fraction in (0, 10), e.g. 0.1 for 10 %",
        )
        _check(
            isinstance(self.max_size_multiple, (int, float))
            and math.isfinite(self.max_size_multiple)
            and self.max_size_multiple > 1,
            "bands.max_size_multiple",
            self.max_size_multiple,
            "must be a number > 1 (times the median recent trade size)",
        )


@dataclass(frozen=True)
class GateConfig:
    low_conf_veto: GuardMode = GuardMode.OFF  # veto cohort-arm trades when conf < low_conf_min
    low_conf_min: float = 0.55
    consensus_gate: GuardMode = GuardMode.OFF  # veto trades a strong 1h overlay contradicts
    consensus_trend_min: float = 0.002  # 0.2% 1h trend
    dynamic_conf_min: GuardMode = GuardMode.OFF  # raise CONF_MIN when 1h realised vol is high
    dynamic_conf_rv_annual: float = 0.80  # 1h realised vol (annualised) above which it applies
    dynamic_conf_step: float = 0.05  # added to CONF_MIN then
    overlay_stale_intervals: float = 2.0  # an overlay older than this many intervals is neutral

    def __post_init__(self) -> None:
        for name in ("low_conf_veto", "consensus_gate", "dynamic_conf_min"):
            _check(
                isinstance(getattr(self, name), GuardMode),
                f"gates.{name}",
                getattr(self, name),
                "must be one of off, on, shadow",
            )
        _check(
            0.5 <= self.low_conf_min <= 1.0,
            "gates.low_conf_min",
            self.low_conf_min,
            "must be in [0.5, 1]",
        )
        _positive("gates.consensus_trend_min", self.consensus_trend_min)
        _positive("gates.dynamic_conf_rv_annual", self.dynamic_conf_rv_annual)
        _unit("gates.dynamic_conf_step", self.dynamic_conf_step)
        _positive("gates.overlay_stale_intervals", self.overlay_stale_intervals)


@dataclass(frozen=True)
class BanditConfig:
    # Bonus added to model arms' means at selection, in units of prior_sd_bps (0.1 -> 5 bps).
    model_optimism: float = 0.0
    epsilon: float = 0.0  # exploration rate over eligible arms
    prior_mean_bps: float = 0.0
    prior_sd_bps: float = 50.0  # reward noise assumed before any observation
    prior_weight: float = 1.0  # pseudo-observations behind the prior

    def __post_init__(self) -> None:
        _check(
            math.isfinite(self.model_optimism),
            "bandit.model_optimism",
            self.model_optimism,
            "must be finite",
        )
        _unit("bandit.epsilon", self.epsilon)
        _positive("bandit.prior_sd_bps", self.prior_sd_bps)
        _positive("bandit.prior_weight", self.prior_weight)


@dataclass(frozen=True)
class RiskConfig:
    sigma_target: float = 0.20  # annualised
    base_notional: float = 5000.0  # USD
    pos_max: float = 1.0  # max |position| as a fraction of base_notional
    cooldown_bars: int = 1
    vol_guard: GuardMode = GuardMode.OFF
    vol_guard_sigma: float = 0.8  # sigma_cap, annualised
    vol_guard_min_scale: float = 0.25
    adv_cap_pct: float = 0.0  # max order notional as % of trailing 1-day volume; 0 = off
    min_order_notional: float = 10.0  # USD; smaller adjustments are not worth the fee
    # Bars a position is held before the time exit; the bandit's reward horizon. It must be
    # the model's label horizon (manifest horizon_bars): 0 takes it from the model.
    max_hold_bars: int = 0
    initial_equity: float = 10_000.0  # USD
    max_drawdown: float = 0.10  # from peak equity -> HALTED
    daily_loss_limit: float = 0.05  # of start-of-day equity -> HALTED
    max_consecutive_losses: int = 5  # more than this -> HALTED

    def __post_init__(self) -> None:
        _positive("risk.sigma_target", self.sigma_target)
        _positive("risk.base_notional", self.base_notional)
        _check(0 < self.pos_max <= 10, "risk.pos_max", self.pos_max, "must be in (0, 10]")
        _check(
            isinstance(self.cooldown_bars, int) and self.cooldown_bars >= 0,
            "risk.cooldown_bars",
            self.cooldown_bars,
            "must be an integer >= 0",
        )
        _check(
            isinstance(self.vol_guard, GuardMode),
            "risk.vol_guard",
            self.vol_guard,
            "must be one of off, on, shadow",
        )
        _positive("risk.vol_guard_sigma", self.vol_guard_sigma)
        _unit("risk.vol_guard_min_scale", self.vol_guard_min_scale)
        _check(
            0 <= self.adv_cap_pct <= 100,
            "risk.adv_cap_pct",
            self.adv_cap_pct,
            "must be in [0, 100]",
        )
        _check(
            self.min_order_notional >= 0,
            "risk.min_order_notional",
            self.min_order_notional,
            "must be >= 0",
        )
        _check(
            isinstance(self.max_hold_bars, int) and self.max_hold_bars >= 0,
            "risk.max_hold_bars",
            self.max_hold_bars,
            "must be an integer >= 1, or 0 for the model's label horizon",
        )
        _positive("risk.initial_equity", self.initial_equity)
        _check(
            0 < self.max_drawdown < 1, "risk.max_drawdown", self.max_drawdown, "must be in (0, 1)"
        )
        _check(
            0 < self.daily_loss_limit < 1,
            "risk.daily_loss_limit",
            self.daily_loss_limit,
            "must be in (0, 1)",
        )
        _check(
            isinstance(self.max_consecutive_losses, int) and self.max_consecutive_losses >= 1,
            "risk.max_consecutive_losses",
            self.max_consecutive_losses,
            "must be an integer >= 1",
        )


@dataclass(frozen=True)
class AccountConfig:
    """Limits on all symbols' books together (operators/account.py)."""

    max_drawdown: float = 0.10  # of the account's peak equity -> every symbol HALTED
    daily_loss_limit: float = 0.05  # of the account's start-of-day equity -> HALTED
    max_gross_leverage: float = 1.0  # Σ|position notional| / account equity; entries past it

    def __post_init__(self) -> None:
        _check(
            0 < self.max_drawdown < 1,
            "account.max_drawdown",
            self.max_drawdown,
            "must be in (0, 1)",
        )
        _check(
            0 < self.daily_loss_limit < 1,
            "account.daily_loss_limit",
            self.daily_loss_limit,
            "must be in (0, 1)",
        )
        _check(
            isinstance(self.max_gross_leverage, (int, float)) and 0 < self.max_gross_leverage <= 20,
            "account.max_gross_leverage",
            self.max_gross_leverage,
            "must be in (0, 20]",
        )


@dataclass(frozen=True)
class ExecutionConfig:
    dry_run: bool = True  # paper fills; live routing is not built yet
    fee_bps: float = 5.0  # taker fee on notional
    slippage_bps: float = 1.0
    slippage_vol_scale: bool = False  # scale slippage by rv / sigma_target
    stale_intent_bars: int = 1  # an intent whose next bar has no trades is rejected

    def __post_init__(self) -> None:
        _check(
            self.dry_run is True,
            "execution.dry_run",
            self.dry_run,
            "live order routing is not implemented; only paper trading (true) is possible",
        )
        _check(0 <= self.fee_bps < 100, "execution.fee_bps", self.fee_bps, "must be in [0, 100)")
        _check(
            0 <= self.slippage_bps < 100,
            "execution.slippage_bps",
            self.slippage_bps,
            "must be in [0, 100)",
        )


@dataclass(frozen=True)
class StrategyConfig:
    strategy_id: str = "ensemble_1_1"
    thresholds: Thresholds = field(default_factory=Thresholds)
    cohorts: CohortConfig = field(default_factory=CohortConfig)
    bands: BandConfig = field(default_factory=BandConfig)
    gates: GateConfig = field(default_factory=GateConfig)
    bandit: BanditConfig = field(default_factory=BanditConfig)
    risk: RiskConfig = field(default_factory=RiskConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    account: AccountConfig = field(default_factory=AccountConfig)
    size_proxy: SizeProxyConfig = field(default_factory=SizeProxyConfig)
    flip_model: bool = False  # flip the sign of model signals
    warmup_bars: int = 1000  # 5m bars before the first decision

    def __post_init__(self) -> None:
        _check(
            isinstance(self.strategy_id, str) and self.strategy_id.isidentifier(),
            "strategy_id",
            self.strategy_id,
            "must be a name like ensemble_1_1",
        )
        _check(
            isinstance(self.warmup_bars, int) and self.warmup_bars >= 60,
            "warmup_bars",
            self.warmup_bars,
            "must be an integer >= 60 (the longest feature window)",
        )

    def with_overrides(self, overrides: dict[str, Any]) -> StrategyConfig:
        """A copy with dotted-path overrides applied, e.g. {"risk.pos_max": 0.3}."""
        cfg: StrategyConfig = self
        for path, value in overrides.items():
            cfg = _replace_path(cfg, path.split("."), value, path)
        return cfg

    def with_model_horizon(self, horizon_bars: int) -> StrategyConfig:
        """The configuration in force with a model whose labels look `horizon_bars` ahead:
        the time exit holds exactly that long, so the hold, the bandit's reward and the
        model's label are about the same move."""
        hold = self.risk.max_hold_bars
        if hold not in (0, horizon_bars):
            raise ConfigError(
                f"risk.max_hold_bars={hold!r} is invalid: the model's label horizon is "
                f"horizon_bars={horizon_bars} (its manifest); use 0 or {horizon_bars}, "
                "or train a model with the horizon you want"
            )
        return dataclasses.replace(
            self, risk=dataclasses.replace(self.risk, max_hold_bars=horizon_bars)
        )

    def as_dict(self) -> dict[str, Any]:
        """The configuration for the audit. The size proxy appears only when enabled, so a
        preset's audit (and every output) is what it was before the proxy existed."""
        d = json.loads(json.dumps(dataclasses.asdict(self), default=_enum_value))
        if not self.size_proxy.enabled:
            del d["size_proxy"]
        return d


def _enum_value(v: Any) -> Any:
    if isinstance(v, enum.Enum):
        return v.value
    raise TypeError(f"not JSON serialisable: {v!r}")


def _replace_path(obj: Any, parts: list[str], value: Any, full: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(obj)}
    head = parts[0]
    if head not in names:
        raise ConfigError(
            f"unknown setting {full!r}: {type(obj).__name__} has no {head!r}; "
            f"known: {sorted(names)}"
        )
    current = getattr(obj, head)
    if len(parts) > 1:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"unknown setting {full!r}: {head!r} has no sub-settings")
        return dataclasses.replace(obj, **{head: _replace_path(current, parts[1:], value, full)})
    return dataclasses.replace(obj, **{head: _coerce(current, value, full)})


def _coerce(current: Any, value: Any, name: str) -> Any:
    try:
        if isinstance(current, GuardMode):
            return GuardMode(value)
        if isinstance(current, bool):
            if isinstance(value, str) and value.lower() in ("true", "1", "on", "yes"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "off", "no"):
                return False
            if isinstance(value, bool):
                return value
            raise ValueError
        if isinstance(current, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(current, float):
            return float(value)
        return type(current)(value)
    except (ValueError, TypeError):
        raise ConfigError(
            f"{name}={value!r} is invalid: expected a value like {current!r}"
        ) from None


ENSEMBLE_1_0 = StrategyConfig(
    strategy_id="ensemble_1_0",
    thresholds=Thresholds(S_MIN=0.12, CONF_MIN=0.60, ALPHA_MIN=0.10),
    gates=GateConfig(),
    bandit=BanditConfig(model_optimism=0.0, epsilon=0.0),
    risk=RiskConfig(pos_max=1.0, vol_guard=GuardMode.OFF),
)

ENSEMBLE_1_1 = StrategyConfig(
    strategy_id="ensemble_1_1",
    thresholds=Thresholds(S_MIN=0.12, CONF_MIN=0.65, ALPHA_MIN=0.10),
    gates=GateConfig(
        low_conf_veto=GuardMode.ON,
        consensus_gate=GuardMode.ON,
        dynamic_conf_min=GuardMode.ON,
    ),
    bandit=BanditConfig(model_optimism=0.1, epsilon=0.0),
    risk=RiskConfig(
        pos_max=0.5, vol_guard=GuardMode.ON, vol_guard_sigma=0.8, vol_guard_min_scale=0.25
    ),
)

PRESETS = {"ensemble_1_0": ENSEMBLE_1_0, "ensemble_1_1": ENSEMBLE_1_1}


def preset(name: str) -> StrategyConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"preset={name!r} is unknown; choose one of {sorted(PRESETS)}") from None
