"""Every KPI the report shows: its key in report.json, its name, unit and formula.

One table, so the HTML, the JSON and docs/backtest.md state the same formulas.
"""

from __future__ import annotations

from dataclasses import dataclass

ANNUALISATION = (
    "Daily returns r_d over UTC calendar days; annualised with √365 (crypto trades every "
    "day); risk-free rate 0. These are quantstats' sharpe/sortino/max_drawdown with "
    "periods=365, rf=0 (cross-checked to 1e-9 in tests/test_backtest.py)."
)


@dataclass(frozen=True)
class Kpi:
    key: str
    name: str
    kind: str  # how to print it: usd, pct (a fraction), percent, ratio, int, bps, prob
    formula: str


KPIS: tuple[Kpi, ...] = (
    Kpi(
        "net_pnl_usd",
        "Net PnL",
        "usd",
        "E_end − E_start: account equity at the last 5m close minus at the evaluation start "
        "(after fees, slippage and funding; an open position is marked at the close)",
    ),
    Kpi("total_return", "Total return", "pct", "E_end / E_start − 1"),
    Kpi(
        "annualised_return",
        "Annualised return",
        "pct",
        "(E_end / E_start)^(365 / evaluation days) − 1 (compounded; noisy on short windows)",
    ),
    Kpi(
        "sharpe",
        "Sharpe (annualised)",
        "ratio",
        "mean(r_d) / std(r_d, ddof=1) × √365; r_d = E_d / E_(d−1) − 1, E_d the equity at the "
        "day's last 5m close, the first day against E_start; risk-free rate 0",
    ),
    Kpi(
        "sortino",
        "Sortino (annualised)",
        "ratio",
        "mean(r_d) / DD × √365, DD = √(Σ_d min(r_d, 0)² / N) with N = all days (target and "
        "risk-free rate 0)",
    ),
    Kpi("volatility_annual", "Volatility (annualised)", "pct", "std(r_d, ddof=1) × √365"),
    Kpi(
        "max_drawdown_daily",
        "Max drawdown (daily closes)",
        "pct",
        "max_d (1 − P_d / max_(k≤d) P_k), P_d = Π(1 + r_k) compounded from 1 before the first "
        "day (quantstats' convention, sign flipped)",
    ),
    Kpi(
        "max_drawdown_5m",
        "Max drawdown (every 5m mark)",
        "pct",
        "max_t (1 − E_t / max_(s≤t) E_s) over every 5m close of the evaluation window",
    ),
    Kpi("round_trips", "Round trips", "int", "closed trades: fills that close a position"),
    Kpi(
        "hit_rate",
        "Hit rate",
        "pct",
        "winning round trips / round trips; a win has trade PnL > 0 after fees and funding",
    ),
    Kpi("avg_win_usd", "Average win", "usd", "mean trade PnL of winning round trips"),
    Kpi("avg_loss_usd", "Average loss", "usd", "mean trade PnL of losing round trips (PnL ≤ 0)"),
    Kpi(
        "avg_win_bps",
        "Average win (bps of entry notional)",
        "bps",
        "mean reward_bps of winners; reward_bps = trade PnL / entry notional × 10⁴",
    ),
    Kpi("avg_loss_bps", "Average loss (bps of entry notional)", "bps", "mean reward_bps of losers"),
    Kpi("payoff_ratio", "Payoff ratio", "ratio", "average win / |average loss|"),
    Kpi("profit_factor", "Profit factor", "ratio", "Σ winning PnL / |Σ losing PnL|"),
    Kpi("expectancy_usd", "Expectancy per round trip", "usd", "mean trade PnL"),
    Kpi(
        "avg_hold_bars",
        "Average holding (5m bars)",
        "ratio",
        "mean (exit fill − entry fill) / 5 min",
    ),
    Kpi("trades_per_day", "Trades per day", "ratio", "round trips / evaluation days"),
    Kpi("fills_per_day", "Fills per day", "ratio", "fills / evaluation days"),
    Kpi(
        "turnover_per_day",
        "Turnover per day",
        "ratio",
        "mean over days of Σ|fill notional|_d / E_(d−1) (the day's starting equity)",
    ),
    Kpi("fees_usd", "Fees", "usd", "Σ fee_usd of the costs stream (fee_bps on fill notional)"),
    Kpi(
        "slippage_usd",
        "Slippage cost",
        "usd",
        "Σ slippage_usd of the costs stream = Σ |qty| × |fill price − bar open|",
    ),
    Kpi("funding_usd", "Funding", "usd", "funding received (+) or paid (−) in the window"),
    Kpi(
        "gross_pnl_usd",
        "Gross PnL (before costs)",
        "usd",
        "net PnL + fees + slippage: PnL at the bar-open reference price with no fee",
    ),
    Kpi(
        "costs_pct_of_gross",
        "Costs as % of gross profit",
        "percent",
        "(fees + slippage) / gross PnL × 100; n/a when gross PnL ≤ 0 (no edge before costs)",
    ),
    Kpi(
        "costs_bps_of_notional",
        "Costs (bps of notional traded)",
        "bps",
        "(fees + slippage) / Σ|fill notional| × 10⁴",
    ),
    Kpi(
        "brier",
        "Brier score",
        "prob",
        "mean (p_up − y)² over every decided 5m close, y = 1 if the close h bars later is "
        "higher (h = the model's horizon), else 0",
    ),
    Kpi(
        "brier_skill",
        "Brier skill vs climatology",
        "ratio",
        "1 − Brier / (ȳ (1 − ȳ)); > 0 beats always predicting the base rate",
    ),
    Kpi("decisions", "Decisions", "int", "5m closes after the warm-up (the bandit was asked)"),
    Kpi("halts", "Halts", "int", "times the trading state became HALTED (kill-switch)"),
    Kpi("errors", "Errors", "int", "records on the errors stream (should be 0)"),
)

KPI_BY_KEY = {k.key: k for k in KPIS}

SLIPPAGE_FORMULA = (
    "The same dataflow rerun with execution.slippage_bps raised by X bps (every fill X bps "
    "worse); the whole path is recomputed, so the bandit's rewards, and so later decisions, "
    "may change too."
)
DECILE_FORMULA = (
    "Closed round trips sorted by the model confidence max(p_up, p_down) at their entry "
    "decision, cut into (up to) ten groups of equal count; hit rate = wins / n per group."
)
CALIBRATION_FORMULA = (
    "p_up of every decided 5m close in ten bins of width 0.1; mean p_up against the observed "
    "frequency of an up move over the model's horizon. On the diagonal = calibrated."
)
LATENCY_FORMULA = (
    "Event time (report.json): order ts_event − decision bar close, and fill ts_event − "
    "order ts_event; a replay stamps a decision at its bar's close and fills it at the next "
    "bar's open, so both are 0 by construction unless bars are missing. Processing (run.json, "
    "varies run to run): the +0 bps run uses ENSEMBLE_CLOCK=wall, so ts_init_ms is the wall "
    "clock; latency = order ts_init − ts_init of the 5m bar it decided on, i.e. the flow's "
    "own work from the market step emitting the bar through context, features, model and "
    "strategy. In a replay it includes waiting behind the other bars of the same input "
    "batch (2,048 records), so it overstates live latency; it excludes Kafka."
)
COMPLETENESS_FORMULA = (
    "Expected = every 5m slot from the first bar's start to the last bar's end; emitted = 5m "
    "bars the flow closed (gap bars included); with data = complete bars (built from all "
    "their data: every 1m candle of a candle bar; gap bars and partial bars are not); "
    "completeness = with data / expected."
)
TURNOVER_FORMULA = KPI_BY_KEY["turnover_per_day"].formula
