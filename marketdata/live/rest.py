"""The REST side of a venue for backfills: JSON over aiohttp, within the weight budget."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

from marketdata.live.ratelimit import WeightBudget

log = logging.getLogger(__name__)

USED_WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
MAX_ATTEMPTS = 4


class RestError(RuntimeError):
    """A REST call that failed after its retries; the message names the call."""


class RestClient:
    def __init__(self, base_url: str, budget: WeightBudget, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.budget = budget
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RestClient:
        self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def get(self, path: str, params: dict[str, Any], weight: int) -> Any:
        return await self._call("GET", path, weight, params=params)

    async def post(self, path: str, body: dict[str, Any], weight: int) -> Any:
        return await self._call("POST", path, weight, json=body)

    async def _call(self, method: str, path: str, weight: int, **kw: Any) -> Any:
        assert self._session is not None, "use RestClient as an async context manager"
        url = self.base_url + path
        for attempt in range(MAX_ATTEMPTS):
            await self.budget.acquire(weight)
            try:
                async with self._session.request(method, url, **kw) as resp:
                    used = resp.headers.get(USED_WEIGHT_HEADER)
                    if used is not None and used.isdigit():
                        self.budget.observe_used(int(used))
                    if resp.status in (418, 429):  # rate limited: wait what the venue asks
                        retry_s = float(resp.headers.get("Retry-After", "5"))
                        log.warning(
                            "%s %s: HTTP %s, waiting %.0f s", method, url, resp.status, retry_s
                        )
                        await asyncio.sleep(retry_s)
                        continue
                    if resp.status >= 400:
                        text = (await resp.text())[:200]
                        raise RestError(f"{method} {url} {kw}: HTTP {resp.status}: {text}")
                    return await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:  # ValueError: bad JSON
                if attempt == MAX_ATTEMPTS - 1:
                    raise RestError(f"{method} {url}: {type(e).__name__}: {e}") from None
                await asyncio.sleep(0.5 * 2**attempt)
        raise RestError(f"{method} {url}: still rate limited after {MAX_ATTEMPTS} attempts")
