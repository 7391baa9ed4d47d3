"""Publish a venue's live market data onto the input topics: `python -m marketdata.live`.

  python -m marketdata.live --venue hyperliquid --symbols BTC-PERP,ETH-PERP \\
      --bootstrap 127.0.0.1:19092 [--record out/hl.jsonl.gz] [--metrics-port 9108]

Runs until SIGTERM or Ctrl-C, then flushes every received record to Kafka and exits 0
(1 if some could not be delivered). A bad option stops the start with a message naming it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from prometheus_client import start_http_server

from dataflows.environment import add_kafka_arguments, kafka_arguments
from marketdata.live import VENUE_CLASSES
from marketdata.live.ingestor import ConfigError, Ingestor, IngestorConfig
from marketdata.live.metrics import FeedMetrics
from marketdata.live.producer import Publisher, PublisherError

FLUSH_TIMEOUT_S = 30.0


def parse_args(argv: list[str] | None) -> tuple[IngestorConfig, int | None]:
    d = IngestorConfig
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venue", required=True, choices=sorted(VENUE_CLASSES))
    ap.add_argument("--symbols", required=True, help="comma-separated, e.g. BTC-PERP,ETH-PERP")
    add_kafka_arguments(ap)
    ap.add_argument("--strategy-id", default=d.strategy_id)
    ap.add_argument(
        "--candle-symbols",
        help="as the flow's ENSEMBLE_CANDLE_SYMBOLS: these get 1m candles and no trades, the "
        "others trades and no candles (default: publish both for every symbol)",
    )
    ap.add_argument("--ws-url", help="WebSocket base URL (default: the venue's public one)")
    ap.add_argument("--rest-url", help="REST base URL (default: the venue's public one)")
    ap.add_argument("--record", type=Path, help="append every raw frame to FILE (.jsonl.gz)")
    ap.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    ap.add_argument("--silence-timeout-s", type=float, default=d.silence_timeout_s)
    ap.add_argument("--backoff-initial-s", type=float, default=d.backoff_initial_s)
    ap.add_argument("--backoff-max-s", type=float, default=d.backoff_max_s)
    ap.add_argument("--dedup-window", type=int, default=d.dedup_window)
    ap.add_argument("--clock-skew-bound-ms", type=int, default=d.clock_skew_bound_ms)
    args = ap.parse_args(argv)
    kafka_arguments(ap, args)
    try:
        cfg = IngestorConfig(
            venue=args.venue,
            symbols=tuple(s.strip() for s in args.symbols.split(",") if s.strip()),
            bootstrap=args.bootstrap,
            prefix=args.prefix,
            strategy_id=args.strategy_id,
            candle_symbols=None
            if args.candle_symbols is None
            else tuple(s.strip() for s in args.candle_symbols.split(",") if s.strip()),
            ws_url=args.ws_url,
            rest_url=args.rest_url,
            record_path=args.record,
            silence_timeout_s=args.silence_timeout_s,
            backoff_initial_s=args.backoff_initial_s,
            backoff_max_s=args.backoff_max_s,
            dedup_window=args.dedup_window,
            clock_skew_bound_ms=args.clock_skew_bound_ms,
        )
    except ConfigError as e:
        ap.error(str(e))
    return cfg, args.metrics_port


async def run(cfg: IngestorConfig, metrics_port: int | None) -> int:
    metrics = FeedMetrics()
    if metrics_port is not None:
        start_http_server(metrics_port, registry=metrics.registry)
    try:
        publisher = Publisher(cfg.bootstrap, cfg.prefix, cfg.strategy_id)
        publisher.check_topics()
    except PublisherError as e:
        logging.error("%s", e)
        return 2
    ingestor = Ingestor(cfg, VENUE_CLASSES[cfg.venue](), publisher, metrics)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await ingestor.run(stop)
    finally:  # a crash too: what librdkafka still holds was received and must go out
        left = publisher.flush(FLUSH_TIMEOUT_S)
    if left or publisher.failed:
        logging.error("%d records not delivered, %d failed", left, publisher.failed)
        return 1
    logging.info("stopped: %d records delivered", publisher.delivered)
    return 0


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cfg, port = parse_args(argv)
    sys.exit(asyncio.run(run(cfg, port)))


if __name__ == "__main__":
    main()
