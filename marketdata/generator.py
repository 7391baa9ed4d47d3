"""A deterministic market generator: the embedded default input. The data is synthetic.

For each symbol a latent drift `z` (AR(1) per minute) moves the price with a lag, and a
minority of informed addresses trade in its direction before the price follows, while a
majority of noise traders trade at random against market makers. Volatility switches
between a calm and a wild regime (a Markov chain per minute). Symbols listed as trade
symbols produce trades with buyer and seller addresses; candle symbols produce 1m candles
built from the same kind of trades; every symbol gets hourly funding. Same seed, same
records, byte for byte.
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
MINUTES_PER_YEAR = 365 * 24 * 60
DEFAULT_START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z

BASE_PRICE = {"BTC-PERP": 42_000.0, "ETH-PERP": 2_300.0}


@dataclass(frozen=True)
class GeneratorConfig:
    seed: int = 7
    start_ms: int = DEFAULT_START_MS
    days: float = 6.0
    trade_symbols: tuple[str, ...] = ("BTC-PERP",)
    candle_symbols: tuple[str, ...] = ("ETH-PERP",)
    trades_per_minute: float = 12.0  # in the calm regime; doubles in the wild one
    n_informed: int = 12
    n_noise: int = 300
    n_market_makers: int = 4
    informed_share: float = 0.2  # share of trades whose aggressor is informed
    informed_accuracy: float = 0.8  # how often an informed trade follows the drift
    vol_calm: float = 0.45  # annualised
    vol_wild: float = 1.6
    regime_switch_per_minute: float = 1 / 720
    drift_persistence: float = 0.97  # AR(1) coefficient of z per minute
    drift_impact: float = 0.35  # share of a minute's volatility explained by z

    def __post_init__(self) -> None:
        if self.days <= 0:
            raise ValueError(f"days={self.days!r} must be > 0")
        if set(self.trade_symbols) & set(self.candle_symbols):
            raise ValueError("a symbol is either a trade symbol or a candle symbol, not both")
        if self.start_ms % MINUTE_MS:
            raise ValueError(f"start_ms={self.start_ms} must be on a minute boundary")

    @property
    def symbols(self) -> tuple[str, ...]:
        return self.trade_symbols + self.candle_symbols


@dataclass
class _Path:
    """One symbol's minute-level path and its trades (arrays, time-sorted)."""

    ts: np.ndarray  # trade times, ms
    px: np.ndarray
    qty: np.ndarray
    side: np.ndarray  # +1 aggressor bought
    aggressor: np.ndarray  # address index
    passive: np.ndarray
    addresses: list[str]
    minute_drift: np.ndarray


def _symbol_rng(seed: int, symbol: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(symbol.encode())])


def _simulate(cfg: GeneratorConfig, symbol: str) -> _Path:
    rng = _symbol_rng(cfg.seed, symbol)
    n_min = int(cfg.days * 24 * 60)
    # volatility regime per minute
    wild = np.zeros(n_min, dtype=bool)
    switches = rng.random(n_min) < cfg.regime_switch_per_minute
    state = False
    for i in range(n_min):  # a short loop over minutes, not trades
        if switches[i]:
            state = not state
        wild[i] = state
    sigma_min = np.where(wild, cfg.vol_wild, cfg.vol_calm) / np.sqrt(MINUTES_PER_YEAR)
    # latent drift z ~ AR(1) with unit stationary variance
    eps = rng.standard_normal(n_min)
    z = np.empty(n_min)
    phi = cfg.drift_persistence
    z_prev = 0.0
    scale = np.sqrt(1 - phi**2)
    for i in range(n_min):
        z_prev = phi * z_prev + scale * eps[i]
        z[i] = z_prev
    noise = rng.standard_normal(n_min)
    lagged = np.concatenate([[0.0], z[:-1]])  # price follows the drift a minute later
    k = cfg.drift_impact
    rets = sigma_min * (np.sqrt(1 - k**2) * noise + k * lagged)
    log_open = np.log(BASE_PRICE.get(symbol, 100.0)) + np.concatenate([[0.0], np.cumsum(rets)[:-1]])

    lam = cfg.trades_per_minute * np.where(wild, 2.0, 1.0)
    counts = rng.poisson(lam)
    n = int(counts.sum())
    minute_of = np.repeat(np.arange(n_min), counts)
    u = rng.random(n)
    order = np.lexsort((u, minute_of))
    minute_of, u = minute_of[order], u[order]
    ts = cfg.start_ms + minute_of * MINUTE_MS + (u * MINUTE_MS).astype(np.int64)
    tick = rng.standard_normal(n) * sigma_min[minute_of] * 0.1
    px = np.exp(log_open[minute_of] + rets[minute_of] * u + tick)
    px = np.round(px, 2 if px.mean() > 1000 else 3)

    informed = rng.random(n) < cfg.informed_share
    follows = rng.random(n) < cfg.informed_accuracy
    drift_side = np.where(z[minute_of] >= 0, 1, -1)
    random_side = np.where(rng.random(n) < 0.5, 1, -1)
    side = np.where(informed, np.where(follows, drift_side, -drift_side), random_side)
    qty = np.round(rng.lognormal(np.log(0.02), 1.0, n) * np.where(informed, 3.0, 1.0), 5)
    qty = np.maximum(qty, 1e-5)
    n_inf, n_noise, n_mm = cfg.n_informed, cfg.n_noise, cfg.n_market_makers
    aggressor = np.where(informed, rng.integers(0, n_inf, n), n_inf + rng.integers(0, n_noise, n))
    passive = np.where(
        rng.random(n) < 0.7,
        n_inf + n_noise + rng.integers(0, n_mm, n),
        n_inf + rng.integers(0, n_noise, n),
    )
    tag = symbol.split("-")[0].lower()
    addresses = (
        [f"0x{tag}inf{i:04d}" for i in range(n_inf)]
        + [f"0x{tag}rnd{i:04d}" for i in range(n_noise)]
        + [f"0x{tag}mm{i:04d}" for i in range(n_mm)]
    )
    return _Path(ts, px, qty, side, aggressor, passive, addresses, z)


def _trade_records(symbol: str, p: _Path) -> Iterator[tuple[int, str, dict[str, Any]]]:
    addrs = p.addresses
    for i in range(len(p.ts)):
        t = int(p.ts[i])
        buy = p.side[i] > 0
        a, b = addrs[p.aggressor[i]], addrs[p.passive[i]]
        yield (
            t,
            "trades",
            {
                "symbol": symbol,
                "ts_event_ms": t,
                "trade_id": f"{symbol}-{i}",
                "px": float(p.px[i]),
                "qty": float(p.qty[i]),
                "side": "buy" if buy else "sell",
                "buyer": a if buy else b,
                "seller": b if buy else a,
            },
        )


def _candle_records(
    symbol: str, p: _Path, cfg: GeneratorConfig
) -> Iterator[tuple[int, str, dict[str, Any]]]:
    minute = (p.ts - cfg.start_ms) // MINUTE_MS
    starts = np.flatnonzero(np.r_[True, minute[1:] != minute[:-1]])
    ends = np.r_[starts[1:], len(minute)]
    highs = np.maximum.reduceat(p.px, starts)
    lows = np.minimum.reduceat(p.px, starts)
    vols = np.add.reduceat(p.qty, starts)
    for j, (s, e) in enumerate(zip(starts, ends, strict=True)):
        t_open = cfg.start_ms + int(minute[s]) * MINUTE_MS
        # a candle becomes available at its close
        yield (
            t_open + MINUTE_MS,
            "candles",
            {
                "symbol": symbol,
                "ts_event_ms": t_open,
                "interval_ms": MINUTE_MS,
                "open": float(p.px[s]),
                "high": float(highs[j]),
                "low": float(lows[j]),
                "close": float(p.px[e - 1]),
                "volume": float(round(vols[j], 5)),
            },
        )


def _funding_records(
    symbol: str, p: _Path, cfg: GeneratorConfig
) -> Iterator[tuple[int, str, dict[str, Any]]]:
    n_hours = int(cfg.days * 24)
    for h in range(1, n_hours + 1):
        recent = p.minute_drift[max(0, h * 60 - 60) : h * 60]
        rate = 0.0001 + 0.0002 * float(np.tanh(recent.mean())) if len(recent) else 0.0001
        t = cfg.start_ms + h * HOUR_MS
        yield t, "funding", {"symbol": symbol, "ts_event_ms": t, "rate": round(rate, 8)}


def generate(cfg: GeneratorConfig) -> Iterator[tuple[str, dict[str, Any]]]:
    """(stream, record) pairs in the order a venue would publish them (by availability).
    On a tie, funding comes first (the merge is stable): a rate stamped at a bar's close
    is known at that close, before the candle or trade that closes the bar."""
    funding, market = [], []
    for sym in cfg.symbols:
        path = _simulate(cfg, sym)
        if sym in cfg.trade_symbols:
            market.append(_trade_records(sym, path))
        else:
            market.append(_candle_records(sym, path, cfg))
        funding.append(_funding_records(sym, path, cfg))
    for _, stream, rec in heapq.merge(*funding, *market, key=lambda x: x[0]):
        yield stream, rec


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description="Print the generated market as JSON lines "
        "({stream, record}); the data is synthetic."
    )
    ap.add_argument("--seed", type=int, default=GeneratorConfig.seed)
    ap.add_argument("--days", type=float, default=GeneratorConfig.days)
    ap.add_argument("--limit", type=int, default=0, help="stop after N records (0: all)")
    args = ap.parse_args(argv)
    cfg = GeneratorConfig(seed=args.seed, days=args.days)
    for i, (stream, rec) in enumerate(generate(cfg)):
        if args.limit and i >= args.limit:
            break
        sys.stdout.write(json.dumps({"stream": stream, "record": rec}) + "\n")


if __name__ == "__main__":
    main()
