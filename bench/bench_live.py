"""Live market data benchmarks (figures, not tests): `make bench-live`.

Needs the real captures in ../shared/data/ws/ and, for 2 and 3, the local broker
(`make kafka-up`, or ENSEMBLE_TEST_KAFKA=host:port).

1. frames/s through the venue parser alone (every frame of each capture).
2. frames/s through the ingestor's frame path: record-free parse, dedup, Avro encode and
   the idempotent producer (acks=all) until every message is acknowledged.
3. frame receipt -> acknowledged on the topic, p50/p99: the Binance capture sent over a
   WebSocket by the local venue server at a steady pace, each frame timed from the moment
   the ingestor has it to the broker's acknowledgement of its last record.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dataflows.topics import provision  # noqa: E402
from marketdata.live import VENUE_CLASSES  # noqa: E402
from marketdata.live.frames import capture_lines  # noqa: E402
from marketdata.live.ingestor import Ingestor, IngestorConfig  # noqa: E402
from marketdata.live.producer import Publisher  # noqa: E402
from tests.venue_servers import (  # noqa: E402
    BINANCE_CAPTURE,
    HL_CAPTURE,
    Script,
    VenueServer,
    load_frames,
)

WARMUP_NS = 1_000_000_000
CAPTURES = {"hyperliquid": HL_CAPTURE, "binance": BINANCE_CAPTURE}


class TimedPublisher(Publisher):
    """Times each record from its frame's receipt to the broker's acknowledgement."""

    frame_t0_ns = 0

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.latencies: list[tuple[int, float]] = []  # (frame receipt ns, ms to ack)

    def delivery_callback(self, recv_ms):
        t0 = self.frame_t0_ns

        def done(err, msg):
            self._on_delivery(err, msg, recv_ms)
            self.latencies.append((t0, (time.perf_counter_ns() - t0) / 1e6))

        return done


def parser_only() -> None:
    for venue, path in CAPTURES.items():
        if not path.is_file():
            print(f"1. parser {venue}: skipped, no capture at {path}")
            continue
        frames = [(ns // 1_000_000, f) for ns, f in capture_lines(path)]
        parser = VENUE_CLASSES[venue]().parser()
        t0 = time.perf_counter()
        records = sum(len(parser.parse(f, ms).items) for ms, f in frames)
        secs = time.perf_counter() - t0
        print(
            f"1. parser {venue}: {len(frames):,} frames ({records:,} records) in {secs:.3f} s"
            f" = {len(frames) / secs:,.0f} frames/s"
        )


def _ingestor(bootstrap: str, venue: str, publisher_cls=Publisher, **kw) -> Ingestor:
    prefix = f"bench-live-{uuid.uuid4().hex[:8]}"
    provision(bootstrap, prefix)
    cfg = IngestorConfig(
        venue=venue, symbols=("BTC-PERP",), bootstrap=bootstrap, prefix=prefix, **kw
    )
    return Ingestor(cfg, VENUE_CLASSES[venue](), publisher_cls(bootstrap, prefix, cfg.strategy_id))


def parse_and_produce(bootstrap: str) -> None:
    path = BINANCE_CAPTURE
    frames = list(capture_lines(path))
    ing = _ingestor(bootstrap, "binance")
    t0 = time.perf_counter()
    for ns, frame in frames:
        ing.handle_frame(frame, ns)
    left = ing.publisher.flush(60)
    secs = time.perf_counter() - t0
    print(
        f"2. parse + dedup + Avro + idempotent produce (acks=all), binance capture: "
        f"{len(frames):,} frames, {ing.publisher.delivered:,} records acknowledged in {secs:.2f} s"
        f" = {len(frames) / secs:,.0f} frames/s ({left} undelivered)"
    )


def receipt_to_topic(bootstrap: str, pace_s: float = 0.001) -> None:
    server_frames = load_frames("binance", BINANCE_CAPTURE)[:5000]
    with VenueServer("binance", server_frames, Script(pace_s=pace_s)) as server:
        ing = _ingestor(
            bootstrap,
            "binance",
            TimedPublisher,
            ws_url=server.ws_url,
            rest_url=server.rest_url,
        )
        pub: TimedPublisher = ing.publisher  # type: ignore[assignment]
        handle = ing.handle_frame

        def timed(frame, recv_ns):
            pub.frame_t0_ns = time.perf_counter_ns()
            handle(frame, recv_ns)

        ing.handle_frame = timed  # type: ignore[method-assign]

        async def main():
            stop = asyncio.Event()
            task = asyncio.create_task(ing.run(stop))
            while not (server.done.is_set() and ing.frames_this_connection >= server.sent_last):
                await asyncio.sleep(0.05)
                pub.poll()
            stop.set()
            await task

        asyncio.run(main())
        pub.flush(30)
    warm = [ms for t0, ms in pub.latencies if t0 - pub.latencies[0][0] > WARMUP_NS]
    cold = [ms for t0, ms in pub.latencies if t0 - pub.latencies[0][0] <= WARMUP_NS]
    lat = sorted(warm)
    p50 = statistics.median(lat)
    p99 = lat[int(0.99 * (len(lat) - 1))]
    print(
        f"3. frame receipt -> acknowledged on the topic, {len(lat):,} records over a local "
        f"WebSocket at 1 frame/{pace_s * 1000:.0f} ms: p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        f" (after the first second; in it, while the idempotent producer gets its id from the"
        f" broker, up to {max(cold):.0f} ms)"
    )


def main() -> None:
    bootstrap = os.environ.get("ENSEMBLE_TEST_KAFKA", "127.0.0.1:19092")
    print(f"broker {bootstrap}, {os.cpu_count()} cores")
    parser_only()
    if not BINANCE_CAPTURE.is_file():
        print("2, 3: skipped, no Binance capture")
        return
    parse_and_produce(bootstrap)
    receipt_to_topic(bootstrap)


if __name__ == "__main__":
    main()
