"""The backfill's REST client against a local HTTP server (aiohttp on 127.0.0.1): a 429 waits
the venue's Retry-After and retries; the venue's used-weight header slows the next call."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from marketdata.live.ratelimit import WeightBudget
from marketdata.live.rest import USED_WEIGHT_HEADER, RestClient, RestError


async def _serve(handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


def test_a_429_waits_retry_after_and_the_used_weight_header_slows_the_next_call():
    calls: list[float] = []

    async def handler(request: web.Request) -> web.Response:
        calls.append(time.monotonic())
        if len(calls) == 1:
            return web.json_response({"code": -1003}, status=429, headers={"Retry-After": "0.3"})
        return web.json_response([1], headers={USED_WEIGHT_HEADER: "2399"})

    async def main() -> float:
        runner, url = await _serve(handler)
        try:
            budget = WeightBudget(2400)  # 40 a second
            async with RestClient(url, budget) as rest:
                assert await rest.get("/fapi/v1/aggTrades", {"symbol": "BTCUSDT"}, 20) == [1]
                assert calls[1] - calls[0] >= 0.3, "waited Retry-After"
                assert budget.tokens <= 1.0, "the venue says the minute is spent"
                t0 = time.monotonic()
                await rest.get("/fapi/v1/klines", {}, 20)
                return time.monotonic() - t0
        finally:
            await runner.cleanup()

    assert asyncio.run(main()) >= 0.45  # (20 - 1) / 40 s before the weight fits


def test_a_failing_endpoint_raises_a_rest_error_naming_the_call():
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="not json at all")

    async def main() -> None:
        runner, url = await _serve(handler)
        try:
            async with RestClient(url, WeightBudget(1200)) as rest:
                await rest.post("/info", {"type": "recentTrades", "coin": "BTC"}, 20)
        finally:
            await runner.cleanup()

    with pytest.raises(RestError, match="/info"):
        asyncio.run(main())
