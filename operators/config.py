"""Strategy configuration: one frozen, validated object per component, and the presets.

Numbers from the specification appear here once, under the names it uses. Ensemble 1.0
and 1.1 are named values of `StrategyConfig`; every 1.1 change is its own switch, and
each new guard has a shadow mode (log what it would have vetoed, trade anyway).

Each field declares its rule (pydantic constraints, and the rule's words as the field's
description); operators/validation.py checks it when the object is made and names a bad
value by its dotted path, as ENSEMBLE_OVERRIDES writes it (`risk.pos_max`).
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import field
from typing import Annotated, Any

from pydantic import Field, ValidationInfo, field_validator

from operators.validation import (
    ConfigError,
    Integer,
    NonNegativeInt,
    Number,
    OpenUnit,
    Positive,
    PositiveInt,
    Unit,
    section,
    validated,
)


class GuardMode(enum.StrEnum):
    OFF = "off"
    ON = "on"
    SHADOW = "shadow"  # evaluate, emit "would have vetoed", trade anyway


Mode = Annotated[GuardMode, Field(description="must be one of off, on, shadow")]
Flag = Annotated[bool, Field(description="must be true or false")]
Confidence = Annotated[Number, Field(ge=0.5, le=1, description="must be in [0.5, 1]")]


@validated(section("thresholds"))
class Thresholds:
    S_MIN: Unit = 0.12  # min |cohort signal| for a cohort arm
    CONF_MIN: Annotated[
        Confidence,
        Field(description="must be in [0.5, 1] (confidence is max(p_up, p_down))"),
    ] = 0.60  # min model confidence for a model arm
    ALPHA_MIN: Unit = 0.10  # min model edge for a model arm


@validated(section("cohorts"))
class CohortConfig:
    # share of ranked addresses in each of the top and bottom cohorts
    top_frac: Annotated[Number, Field(gt=0, le=0.5, description="must be in (0, 0.5]")] = 0.10
    # addresses with a skill score before cohorts exist
    min_ranked: Annotated[Integer, Field(ge=2, description="must be an integer >= 2")] = 20
    flow_halflife_bars: Positive = 6.0  # smoothing of cohort flow
    skill_halflife_bars: Positive = 288.0  # memory of an address's skill (1 day of 5m bars)
    stale_intervals: Positive = 2.0  # an external cohort snapshot older than this many 5m bars
    # address table cap; the smallest |skill| is evicted first
    max_addresses: Annotated[
        Integer, Field(description="must be an integer >= cohorts.min_ranked")
    ] = 20_000

    @field_validator("max_addresses")
    @classmethod
    def _holds_the_ranked(cls, v: int, info: ValidationInfo) -> int:
        min_ranked = info.data.get("min_ranked")
        if min_ranked is not None and v < min_ranked:
            raise ValueError(f"cohorts.min_ranked is {min_ranked}")
        return v


@validated(section("size_proxy"))
class SizeProxyConfig:
    """The trade-size cohort proxy (operators/size_proxy.py) for trades without addresses.

    Off by default: the presets' outputs stay as they were. `large_quantile` was set before
    any measurement (the top decile of prints, as `cohorts.top_frac` takes the top decile
    of addresses) and is not tuned on results."""

    enabled: Flag = False
    large_quantile: OpenUnit = 0.90  # a print at or above this quantile of earlier prints is large
    size_halflife_bars: Positive = 288.0  # memory of the print-size distribution (1 day of 5m)
    min_prints: PositiveInt = 1000  # earlier prints needed before any print is classified


@validated(section("bands"))
class BandConfig:
    """How far a trade may lie from the recent reference before it is an outlier
    (operators/bands.py): its price from the median of the symbol's recent trade prices,
    its size from the median of their sizes."""

    max_price_deviation: Annotated[
        Number, Field(gt=0, lt=10, description="must be a fraction in (0, 10), e.g. 0.1 for 10 %")
    ] = 0.10  # |px / reference - 1|; 0.10 = 10 %
    max_size_multiple: Annotated[
        Number,
        Field(gt=1, description="must be a number > 1 (times the median recent trade size)"),
    ] = 100_000.0  # qty / reference qty (real perps reach ~3,000)


@validated(section("gates"))
class GateConfig:
    low_conf_veto: Mode = GuardMode.OFF  # veto cohort-arm trades when conf < low_conf_min
    low_conf_min: Confidence = 0.55
    consensus_gate: Mode = GuardMode.OFF  # veto trades a strong 1h overlay contradicts
    consensus_trend_min: Positive = 0.002  # 0.2% 1h trend
    dynamic_conf_min: Mode = GuardMode.OFF  # raise CONF_MIN when 1h realised vol is high
    dynamic_conf_rv_annual: Positive = 0.80  # 1h realised vol (annualised) above which it applies
    dynamic_conf_step: Unit = 0.05  # added to CONF_MIN then
    overlay_stale_intervals: Positive = 2.0  # an overlay older than this many intervals is neutral


@validated(section("bandit"))
class BanditConfig:
    # Bonus added to model arms' means at selection, in units of prior_sd_bps (0.1 -> 5 bps).
    model_optimism: Number = 0.0
    epsilon: Unit = 0.0  # exploration rate over eligible arms
    prior_mean_bps: Number = 0.0
    prior_sd_bps: Positive = 50.0  # reward noise assumed before any observation
    prior_weight: Positive = 1.0  # pseudo-observations behind the prior


@validated(section("risk"))
class RiskConfig:
    sigma_target: Positive = 0.20  # annualised
    base_notional: Positive = 5000.0  # USD
    # max |position| as a fraction of base_notional
    pos_max: Annotated[Number, Field(gt=0, le=10, description="must be in (0, 10]")] = 1.0
    cooldown_bars: NonNegativeInt = 1
    vol_guard: Mode = GuardMode.OFF
    vol_guard_sigma: Positive = 0.8  # sigma_cap, annualised
    vol_guard_min_scale: Unit = 0.25
    # max order notional as % of trailing 1-day volume; 0 = off
    adv_cap_pct: Annotated[Number, Field(ge=0, le=100, description="must be in [0, 100]")] = 0.0
    # USD; smaller adjustments are not worth the fee
    min_order_notional: Annotated[Number, Field(ge=0, description="must be >= 0")] = 10.0
    # Bars a position is held before the time exit; the bandit's reward horizon. It must be
    # the model's label horizon (manifest horizon_bars): 0 takes it from the model.
    max_hold_bars: Annotated[
        Integer,
        Field(ge=0, description="must be an integer >= 1, or 0 for the model's label horizon"),
    ] = 0
    initial_equity: Positive = 10_000.0  # USD
    max_drawdown: OpenUnit = 0.10  # from peak equity -> HALTED
    daily_loss_limit: OpenUnit = 0.05  # of start-of-day equity -> HALTED
    max_consecutive_losses: PositiveInt = 5  # more than this -> HALTED


@validated(section("account"))
class AccountConfig:
    """Limits on all symbols' books together (operators/account.py)."""

    max_drawdown: OpenUnit = 0.10  # of the account's peak equity -> every symbol HALTED
    daily_loss_limit: OpenUnit = 0.05  # of the account's start-of-day equity -> HALTED
    # Σ|position notional| / account equity; entries past it
    max_gross_leverage: Annotated[Number, Field(gt=0, le=20, description="must be in (0, 20]")] = (
        1.0
    )


Bps = Annotated[Number, Field(ge=0, lt=100, description="must be in [0, 100)")]


@validated(section("execution"))
class ExecutionConfig:
    dry_run: bool = True  # paper fills; live routing is not built yet
    fee_bps: Bps = 5.0  # taker fee on notional
    slippage_bps: Bps = 1.0
    slippage_vol_scale: Flag = False  # scale slippage by rv / sigma_target

    @field_validator("dry_run")
    @classmethod
    def _paper_only(cls, v: bool) -> bool:
        if not v:
            raise ValueError(
                "live order routing is not implemented; only paper trading (true) is possible"
            )
        return v


@validated(section(""))
class StrategyConfig:
    strategy_id: Annotated[
        str, Field(pattern=r"^[A-Za-z_]\w*$", description="must be a name like ensemble_1_1")
    ] = "ensemble_1_1"
    thresholds: Thresholds = field(default_factory=Thresholds)
    cohorts: CohortConfig = field(default_factory=CohortConfig)
    bands: BandConfig = field(default_factory=BandConfig)
    gates: GateConfig = field(default_factory=GateConfig)
    bandit: BanditConfig = field(default_factory=BanditConfig)
    risk: RiskConfig = field(default_factory=RiskConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    account: AccountConfig = field(default_factory=AccountConfig)
    size_proxy: SizeProxyConfig = field(default_factory=SizeProxyConfig)
    flip_model: Flag = False  # flip the sign of model signals
    # 5m bars before the first decision
    warmup_bars: Annotated[
        Integer,
        Field(ge=60, description="must be an integer >= 60 (the longest feature window)"),
    ] = 1000

    def with_overrides(self, overrides: dict[str, Any]) -> StrategyConfig:
        """A copy with dotted-path overrides applied, e.g. {"risk.pos_max": 0.3}; values are
        coerced as the field's type says ("0.3" -> 0.3, "shadow" -> GuardMode.SHADOW)."""
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
    names = {f.name for f in dataclasses.fields(obj)}
    head = parts[0]
    if head not in names:
        raise ConfigError(
            f"unknown setting {full!r}: {type(obj).__name__} has no {head!r}; "
            f"known: {sorted(names)}"
        )
    if len(parts) == 1:  # the class checks and coerces the value, naming it by `full`
        return dataclasses.replace(obj, **{head: value})
    current = getattr(obj, head)
    if not dataclasses.is_dataclass(current):
        raise ConfigError(f"unknown setting {full!r}: {head!r} has no sub-settings")
    return dataclasses.replace(obj, **{head: _replace_path(current, parts[1:], value, full)})


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
