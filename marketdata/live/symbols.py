"""The one symbol map: Ensemble symbol <-> each venue's name for the same perpetual."""

from __future__ import annotations

VENUES = ("hyperliquid", "binance")

# Ensemble symbol -> {venue: venue symbol}. Add a market here and nowhere else.
SYMBOLS: dict[str, dict[str, str]] = {
    "BTC-PERP": {"hyperliquid": "BTC", "binance": "BTCUSDT"},
    "ETH-PERP": {"hyperliquid": "ETH", "binance": "ETHUSDT"},
}

_BY_VENUE = {venue: {names[venue]: symbol for symbol, names in SYMBOLS.items()} for venue in VENUES}


class UnknownSymbol(ValueError):
    """A symbol that is not in the map; the message names it and the known ones."""


def venue_symbol(symbol: str, venue: str) -> str:
    """BTC-PERP -> BTC (hyperliquid) or BTCUSDT (binance)."""
    if venue not in VENUES:
        raise UnknownSymbol(f"unknown venue {venue!r}; known: {list(VENUES)}")
    names = SYMBOLS.get(symbol)
    if names is None:
        raise UnknownSymbol(f"unknown symbol {symbol!r}; known: {sorted(SYMBOLS)}")
    return names[venue]


def ensemble_symbol(venue: str, name: str) -> str:
    """BTC (hyperliquid) or BTCUSDT / btcusdt (binance) -> BTC-PERP."""
    table = _BY_VENUE.get(venue)
    if table is None:
        raise UnknownSymbol(f"unknown venue {venue!r}; known: {list(VENUES)}")
    symbol = table.get(name.upper() if venue == "binance" else name)
    if symbol is None:
        raise UnknownSymbol(f"unknown {venue} symbol {name!r}; known: {sorted(table)}")
    return symbol
