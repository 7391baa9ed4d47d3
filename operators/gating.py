"""Signals and gating: which arms are eligible, and which gates veto a chosen trade.

Numbers from SPEC 6: eligibility at S_MIN / CONF_MIN / ALPHA_MIN; the no-trade zone
(`low_conf_veto` below conf 0.55 for cohort arms); the consensus gate against a strong 1h
trend (0.2%); dynamic CONF_MIN from 1h realised volatility. Each gate has a GuardMode:
OFF, ON, or SHADOW (report the would-be veto, trade anyway).

With the trade-size cohort proxy on (operators/size_proxy.py) there are two more arms,
`pros_size_proxy` and `amateurs_size_proxy`: cohort arms in every rule (S_MIN, alpha =
|signal|, the no-trade zone), named as the proxy they are. With it off they do not exist.
"""

from __future__ import annotations

from dataclasses import dataclass

from operators.config import GateConfig, GuardMode, Thresholds
from operators.reasons import Reason
from operators.size_proxy import ProxyValues

ARMS = ("pros", "amateurs", "model_meta", "model_bma")
PROXY_ARMS = ("pros_size_proxy", "amateurs_size_proxy")  # only with size_proxy.enabled
ALL_ARMS = ARMS + PROXY_ARMS
# Thresholds are inclusive; this absorbs float noise such as 1 - 0.7 = 0.30000000000000004.
EPS = 1e-12
COHORT_ARMS = frozenset({"pros", "amateurs", *PROXY_ARMS})
MODEL_ARMS = frozenset({"model_meta", "model_bma"})


def arms_in_use(size_proxy: bool) -> tuple[str, ...]:
    """The bandit's arms: SPEC 6's four, and the size proxy's two when it is on."""
    return ALL_ARMS if size_proxy else ARMS


@dataclass(slots=True)
class ModelView:
    p_up: float
    p_down: float
    conf: float  # max(p_up, p_down)
    alpha: float  # |p_up - p_down|
    s_model_meta: float  # [-1, 1], sign = direction
    s_model_bma: float


def model_view(p_up: float, p_up_bma: float | None = None, flip: bool = False) -> ModelView:
    """p_up=0.70 -> conf 0.70, alpha 0.40, s_model_meta +0.40 (or -0.40 flipped).

    `flip` (`flip_model`: the model's sign convention is the opposite of ours) reads the
    model's p_up as our p_down, so the signs flip and p_up/p_down, which every record
    publishes and the side of a trade is judged by (strategy_status, the low-confidence
    alert, the side-probability metric, the copilot), stay on the side the signs give."""
    if flip:
        p_up = 1.0 - p_up
        p_up_bma = None if p_up_bma is None else 1.0 - p_up_bma
    p_down = 1.0 - p_up
    s_meta = p_up - p_down
    s_bma = s_meta if p_up_bma is None else 2.0 * p_up_bma - 1.0
    return ModelView(p_up, p_down, max(p_up, p_down), abs(p_up - p_down), s_meta, s_bma)


@dataclass(slots=True)
class Signals:
    s_top: float
    s_bot: float
    s_mood: float
    model: ModelView
    size_proxy: ProxyValues | None = None  # None: the proxy is off

    def arm_value(self, arm: str) -> float:
        if arm == "pros":
            return self.s_top
        if arm == "amateurs":
            return self.s_bot
        if arm in PROXY_ARMS:
            p = self.size_proxy
            if p is None:
                raise ValueError(f"arm {arm} needs the size proxy, which is off")
            return p.s_top if arm == "pros_size_proxy" else p.s_bot
        if arm == "model_meta":
            return self.model.s_model_meta
        return self.model.s_model_bma


def effective_conf_min(th: Thresholds, gates: GateConfig, rv_1h_annual: float) -> float:
    """CONF_MIN, raised by dynamic_conf_step when 1h realised vol is above its threshold."""
    if gates.dynamic_conf_min is GuardMode.ON and rv_1h_annual > gates.dynamic_conf_rv_annual:
        # rounded: 0.65 + 0.05 is 0.7000000000000001, which would exclude conf exactly 0.70
        return min(1.0, round(th.CONF_MIN + gates.dynamic_conf_step, 9))
    return th.CONF_MIN


def eligibility(sig: Signals, th: Thresholds, conf_min: float) -> dict[str, bool]:
    model_ok = sig.model.conf >= conf_min - EPS and sig.model.alpha >= th.ALPHA_MIN - EPS
    elig = {
        "pros": abs(sig.s_top) >= th.S_MIN - EPS,
        "amateurs": abs(sig.s_bot) >= th.S_MIN - EPS,
        "model_meta": model_ok,
        "model_bma": model_ok,
    }
    p = sig.size_proxy
    if p is not None:  # like the cohort arms, once the two size groups are ranked
        elig["pros_size_proxy"] = p.ready and abs(p.s_top) >= th.S_MIN - EPS
        elig["amateurs_size_proxy"] = p.ready and abs(p.s_bot) >= th.S_MIN - EPS
    return elig


def side_threshold(arm: str, th: Thresholds) -> float:
    return th.S_MIN if arm in COHORT_ARMS else th.ALPHA_MIN


def direction_and_alpha(arm: str, sig: Signals, th: Thresholds) -> tuple[int, float]:
    """The chosen arm's side: (0, 0.0) when its raw signal is under its side threshold.

    Alpha is the model's alpha for model arms and |signal| for cohort arms.
    """
    raw = sig.arm_value(arm)
    if abs(raw) < side_threshold(arm, th) - EPS:
        return 0, 0.0
    direction = 1 if raw > 0 else -1
    alpha = sig.model.alpha if arm in MODEL_ARMS else abs(raw)
    return direction, alpha


@dataclass(slots=True)
class Veto:
    reason: Reason
    detail: str
    shadow: bool  # True: would have vetoed, traded anyway


def low_conf_veto(arm: str, conf: float, gates: GateConfig) -> Veto | None:
    """The no-trade zone: a cohort arm may not trade while the model has no view."""
    if gates.low_conf_veto is GuardMode.OFF or arm not in COHORT_ARMS:
        return None
    if conf >= gates.low_conf_min - EPS:
        return None
    return Veto(
        Reason.LOW_CONF_VETO,
        f"{arm} arm at model conf {conf:.3f} < {gates.low_conf_min}",
        gates.low_conf_veto is GuardMode.SHADOW,
    )


def consensus_veto(direction: int, trend_1h: float | None, gates: GateConfig) -> Veto | None:
    """Veto a trade that a strong 1h trend contradicts; a stale or missing 1h is neutral."""
    if gates.consensus_gate is GuardMode.OFF or trend_1h is None or direction == 0:
        return None
    if abs(trend_1h) < gates.consensus_trend_min - EPS or (trend_1h > 0) == (direction > 0):
        return None
    side = "long" if direction > 0 else "short"
    return Veto(
        Reason.CONSENSUS_1H,
        f"{side} against 1h trend {trend_1h:+.4%} (threshold {gates.consensus_trend_min:.2%})",
        gates.consensus_gate is GuardMode.SHADOW,
    )
