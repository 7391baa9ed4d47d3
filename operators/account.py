"""Account-level risk: limits on all symbols' books together (SPEC 6 rules, account-wide).

Each symbol keeps its own book and kill-switches; the account adds, across symbols:
- drawdown of the account's equity (the sum of every book) from its peak over
  `account.max_drawdown`, or a UTC day's account loss over `account.daily_loss_limit`
  → every symbol HALTED and flattened (its flatten decided at the close where the limit
  fires: `strategy.on_close` checks the limits once every symbol closing then is marked),
  until an operator's `reset_kill_switch` (which re-arms the account from its current
  equity);
- gross exposure: an entry that would take Σ|position notional| over
  `account.max_gross_leverage` × account equity is vetoed (`account_gross_exposure`);
  exits always pass.
The flow runs every symbol's strategy in one keyed step on a single account key, so this
state is seen by every symbol in event order and snapshotted with their books.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from operators.bars import TIMEFRAME_MS
from operators.config import AccountConfig
from operators.kpis import utc_day
from operators.reasons import Reason
from operators.risk import TradingState


@dataclass
class AccountRisk:
    equity_by_symbol: dict[str, float] = field(default_factory=dict)
    notional_by_symbol: dict[str, float] = field(default_factory=dict)  # |position| in USD
    state: TradingState = TradingState.ACTIVE
    halt_reason: str = ""
    peak_equity: float = 0.0
    day: int = -1
    day_start_equity: float = 0.0
    last_equity: float | None = None
    max_drawdown_seen: float = 0.0

    @classmethod
    def new(cls, symbols: list[str] | frozenset[str], initial_equity: float) -> AccountRisk:
        """An account whose books all start at `initial_equity`, before any mark."""
        books = dict.fromkeys(sorted(symbols), initial_equity)
        return cls(books, dict.fromkeys(books, 0.0), peak_equity=sum(books.values()))

    def open_books(self, symbols: list[str] | frozenset[str], initial_equity: float) -> None:
        """Books for `symbols` the account has none for (a resume that trades a symbol
        more), each at `initial_equity` as `new` starts them: in the account's equity, its
        peak and the day's start alike, so the new book's capital is not counted as a
        gain that hides the day's losses from the daily limit."""
        for symbol in sorted(set(symbols) - set(self.equity_by_symbol)):
            self.equity_by_symbol[symbol] = initial_equity
            self.notional_by_symbol[symbol] = 0.0
            self.peak_equity += initial_equity
            if self.last_equity is not None:  # marked before: a day is under way
                self.day_start_equity += initial_equity
                self.last_equity += initial_equity

    def equity(self) -> float:
        return sum(self.equity_by_symbol.values())

    def gross_usd(self) -> float:
        return sum(self.notional_by_symbol.values())

    def drawdown(self) -> float:
        e = self.equity()
        return 0.0 if self.peak_equity <= 0 else max(0.0, 1.0 - e / self.peak_equity)

    def book(self, symbol: str, equity: float, notional_usd: float) -> None:
        """One symbol's mark-to-market at a 5m close, before the account's `close` at it."""
        self.equity_by_symbol[symbol] = equity
        self.notional_by_symbol[symbol] = abs(notional_usd)

    def close(self, ts_ms: int) -> None:
        """The account at a 5m close, once every symbol closing then has its `book`: the
        day's start, the peak and the deepest drawdown see the books at one time."""
        total = self.equity()
        day = utc_day(ts_ms)
        if day != self.day:
            start = total if self.last_equity is None else self.last_equity
            self.day, self.day_start_equity = day, start
        self.last_equity = total
        self.peak_equity = max(self.peak_equity, total)
        self.max_drawdown_seen = max(self.max_drawdown_seen, self.drawdown())

    def check(self, cfg: AccountConfig) -> tuple[Reason, str] | None:
        """The account limit that fires now, if any (only while not already HALTED)."""
        if self.state is TradingState.HALTED:
            return None
        e = self.equity()
        if self.drawdown() > cfg.max_drawdown:
            return Reason.ACCOUNT_DRAWDOWN_LIMIT, (
                f"account equity {e:,.2f} USD is {self.drawdown():.2%} below its peak "
                f"{self.peak_equity:,.2f} (limit {_pct(cfg.max_drawdown)})"
            )
        if self.day_start_equity > 0 and 1.0 - e / self.day_start_equity > cfg.daily_loss_limit:
            return Reason.ACCOUNT_DAILY_LOSS_LIMIT, (
                f"account equity {e:,.2f} USD lost {1.0 - e / self.day_start_equity:.2%} "
                f"since the day's start {self.day_start_equity:,.2f} "
                f"(limit {_pct(cfg.daily_loss_limit)})"
            )
        return None

    def summary(self) -> dict[str, Any]:
        """The account at the end of a run: every book together (the run summary's line)."""
        return {
            "equity": self.equity(),
            "peak_equity": self.peak_equity,
            "max_drawdown": self.max_drawdown_seen,
            "trading_state": self.state.value,
            "halt_reason": self.halt_reason,
        }

    def halt(self, reason: Reason, detail: str) -> None:
        self.state, self.halt_reason = TradingState.HALTED, f"{reason.value}: {detail}"

    def reset(self) -> None:
        """An operator's reset: the account limits re-arm from the current equity."""
        self.state, self.halt_reason = TradingState.ACTIVE, ""
        self.peak_equity = self.day_start_equity = self.equity()

    def entry_veto(
        self, symbol: str, new_notional_usd: float, cfg: AccountConfig
    ) -> tuple[Reason, str] | None:
        """Veto an entry that would take gross exposure past the account's limit."""
        held = self.notional_by_symbol.get(symbol, 0.0)
        if new_notional_usd <= held:
            return None  # it reduces (or keeps) this symbol's exposure
        gross_after = self.gross_usd() - held + new_notional_usd
        cap = cfg.max_gross_leverage * self.equity()
        if gross_after > cap:
            return Reason.ACCOUNT_GROSS_EXPOSURE, (
                f"gross exposure would be {gross_after:,.0f} USD, over "
                f"{cfg.max_gross_leverage} x account equity {self.equity():,.0f} USD"
            )
        return None

    def commit(self, symbol: str, new_notional_usd: float) -> None:
        """An entry intent: count its exposure now, before its fill at the next open."""
        self.notional_by_symbol[symbol] = max(
            self.notional_by_symbol.get(symbol, 0.0), abs(new_notional_usd)
        )


@dataclass
class EventTimeAligner:
    """Releases 5m bar contexts of all symbols in event-time order, (close, symbol).

    The account reads every symbol's marks, so a bar must not be decided on before the
    other symbols' bars up to its close have been marked: a bar closing at t goes out once
    every symbol seen so far has a bar closing at or after t (the market emits a gap bar
    for an empty window, so each symbol keeps advancing). Symbols that have not sent any
    bar yet do not hold the others back; their first bars arrive during the warm-up.
    """

    latest_close_ms: dict[str, int] = field(default_factory=dict)
    waiting: list[Any] = field(default_factory=list)  # sorted by (close, symbol)
    # live operator commands kept for the first bar of their symbol closing at or after
    # their time, in arrival order (`command`)
    commands: list[Any] = field(default_factory=list)

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("commands", [])  # snapshots from before live commands were kept
        self.__dict__.update(state)

    def command(self, cmd: Any) -> bool:
        """Live (the wall clock): whether an operator command may apply now, between bars,
        as it arrives: every bar of its symbol closing before its time has been decided (no
        bar yet counts as none to wait for). Otherwise it is kept, and `due` hands it out
        before the first of its symbol's bars closing at or after its time, the bar a replay
        applies it at. Read from a backlog (a restart, a flow that was down), a command
        arrives with the records read around it, hours of bars ahead of the strategy, and
        was applied at once: a halt and the resume after it both before any bar between
        them, a run's decisions changed with the read's timing, and a restart republished
        decisions that disagreed with the copies published before the crash."""
        symbol, ts = cmd.symbol, cmd.ts_event_ms
        latest = self.latest_close_ms.get(symbol)
        behind = latest is not None and (
            latest + BAR_MS < ts
            or any(c.bar.symbol == symbol and c.bar.end_ms < ts for c in self.waiting)
            or any(c.symbol == symbol for c in self.commands)  # in their order
        )
        if behind:
            self.commands.append(cmd)
        return not behind

    def due(self, symbol: str, close_ms: int) -> list[Any]:
        """The kept commands of `symbol` to apply before deciding its bar closing at
        `close_ms`, in arrival order."""
        if not self.commands:
            return []
        out: list[Any] = []
        kept: list[Any] = []
        for c in self.commands:
            (out if c.symbol == symbol and c.ts_event_ms <= close_ms else kept).append(c)
        self.commands = kept
        return out

    def flush_commands(self) -> list[Any]:
        """The end of the input: the kept commands no bar will reach."""
        out, self.commands = self.commands, []
        return out

    def add(self, ctx: Any) -> list[Any]:
        bar = ctx.bar
        self.latest_close_ms[bar.symbol] = max(
            bar.end_ms, self.latest_close_ms.get(bar.symbol, bar.end_ms)
        )
        bisect.insort(self.waiting, ctx, key=_order)
        until = min(self.latest_close_ms.values())
        n = bisect.bisect_right(self.waiting, (until, "\uffff"), key=_order)
        ready, self.waiting = self.waiting[:n], self.waiting[n:]
        return ready

    def flush(self) -> list[Any]:
        ready, self.waiting = self.waiting, []
        return ready

    def trade_only(self, symbols: frozenset[str] | set[str]) -> None:
        """Wait only for `symbols`' bars (a resume under settings that no longer trade a
        symbol): a symbol whose bars will never come again must not hold back the others'
        for ever. Its bars already waiting still go out in their turn."""
        for symbol in [s for s in self.latest_close_ms if s not in symbols]:
            del self.latest_close_ms[symbol]


BAR_MS = TIMEFRAME_MS["5m"]


def _pct(fraction: float) -> str:
    """A limit as set, in percent: 0.05 -> 5%, 0.025 -> 2.5% (not the 2% of :.0%)."""
    return f"{fraction * 100:g}%"


def _order(ctx: Any) -> tuple[int, str]:
    return ctx.bar.end_ms, ctx.bar.symbol


class ResumeError(RuntimeError):
    """A recovery snapshot the flow must not resume under its settings; the message says
    what to do."""


def check_dropped_books(books: Mapping[str, Any], traded: Iterable[str]) -> None:
    """Refuse a resume under settings that no longer trade a symbol whose book (a
    `SymbolState`) holds a position or an order waiting to fill: nothing would read its
    market again, so the position would sit in the account, never marked, exited or
    flattened by a kill-switch. A flat book is left as it is (its equity stays in the
    account's)."""
    traded = set(traded)
    open_books = [
        f"{symbol} ({_what_is_open(book)})"
        for symbol, book in sorted(books.items())
        if symbol not in traded and (book.portfolio.qty != 0 or book.pending is not None)
    ]
    if open_books:
        raise ResumeError(
            f"the recovery snapshot holds {', '.join(open_books)}, which the settings no "
            "longer trade (ENSEMBLE_SYMBOLS): nothing would manage it again. Trade the "
            "symbol again and halt it (a halt flattens it), then restart without it; or "
            "start on a new recovery directory."
        )


def _what_is_open(book: Any) -> str:
    parts = []
    if book.portfolio.qty != 0:
        parts.append(f"a position of {book.portfolio.qty:g}")
    if book.pending is not None:
        parts.append(f"an order waiting to fill ({book.pending.purpose.value})")
    return " and ".join(parts)
