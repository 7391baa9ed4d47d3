"""The Slack incoming-webhook sink: HTTP POST of JSON `{"text": ...}` to the webhook URL.

Slack answers 200 `ok`; 429 with `Retry-After` (seconds) when rate-limited; 4xx such as
`invalid_payload`, `no_service` or `channel_is_archived` for a message that will never be
accepted, and 5xx for its own trouble. 429, 5xx and network errors are retried (after
Retry-After, or with backoff) within a time budget, a critical alert's for as long as they
last (until `sleep` says the consumer is stopping); other 4xx are not. The URL itself is
a secret (whoever has it can post to the channel): it is never logged or put in an error.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import logging
import math
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("ensemble.alerts.slack")

ENV_VAR = "SLACK_WEBHOOK_URL"
_LOOPBACK_NAMES = {"localhost"}


class WebhookConfigError(ValueError):
    """The webhook URL is unusable (the message names the variable, never the URL)."""


def _loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str) -> str:
    """https://..., or http:// only to a loopback address (a local stand-in for tests)."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
    except ValueError:
        raise WebhookConfigError(f"{ENV_VAR} is not a valid URL") from None
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url.strip()):
        # http.client would refuse it at the first post, quoting the URL in its error
        raise WebhookConfigError(
            f"{ENV_VAR} holds a space or a control character inside it (a pasted line "
            "break?); set it to the URL alone"
        )
    if not host:
        raise WebhookConfigError(f"{ENV_VAR} has no host; expected https://hooks.slack.com/...")
    if parts.scheme == "https" or (parts.scheme == "http" and _loopback(host)):
        return url.strip()
    raise WebhookConfigError(
        f"{ENV_VAR} must be an https:// URL (plain http is allowed only to 127.0.0.1/localhost)"
    )


@dataclass
class PostResult:
    ok: bool
    status: int | None  # the last HTTP status, None when no answer came
    attempts: int
    error: str = ""


class SlackWebhook:
    """Posts alert texts; `send` returns a PostResult and never raises on delivery trouble."""

    name = "slack"

    def __init__(
        self,
        url: str,
        timeout_s: float = 10.0,
        budget_s: float = 60.0,
        max_attempts: int = 5,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self._url = check_url(url)
        self.timeout_s = timeout_s
        self.budget_s = budget_s
        self.max_attempts = max_attempts
        self.sleep = sleep  # between retries; a true answer means stop retrying (Event.wait)
        self.sent = 0
        self.failed = 0

    def __repr__(self) -> str:  # keeps the URL out of any accidental repr in a log
        return "SlackWebhook(url=<REDACTED>)"

    def _post_once(self, payload: bytes) -> tuple[int | None, float | None, str]:
        """(status, retry-after seconds or None, error text) of one POST."""
        req = urllib.request.Request(
            self._url,
            data=payload,
            method="POST",
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310
                # the status says Slack took it; a body cut short changes nothing
                with contextlib.suppress(http.client.HTTPException, OSError):
                    resp.read()
                return resp.status, None, ""
        except urllib.error.HTTPError as e:
            try:
                body = e.read(300).decode("utf-8", "replace").strip()
            except (http.client.HTTPException, OSError):
                body = ""
            retry_after = _retry_after(e.headers.get("Retry-After"))
            return e.code, retry_after, body or e.reason
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            return None, None, f"{type(e).__name__}: {reason}"
        except http.client.HTTPException as e:  # no valid HTTP answer: as if none came
            return None, None, type(e).__name__

    def send(self, text: str, critical: bool = False) -> PostResult:
        """Post `text`. A critical alert (a kill-switch, a dead flow) is not given up while
        Slack is down: the operator must hear of it when Slack is back."""
        payload = json.dumps({"text": text}).encode("utf-8")
        started = time.monotonic()
        backoff = 1.0
        attempts = 0
        status: int | None = None
        error = ""
        while critical or attempts < self.max_attempts:
            attempts += 1
            status, retry_after, error = self._post_once(payload)
            if status is not None and 200 <= status < 300:
                self.sent += 1
                return PostResult(True, status, attempts)
            retryable = status is None or status == 429 or status >= 500
            if not retryable:
                break
            wait = retry_after if retry_after is not None else backoff
            backoff = min(backoff * 2, 30.0)
            if not critical and time.monotonic() - started + wait > self.budget_s:
                error = f"{error} (gave up: retrying would exceed {self.budget_s:.0f} s)"
                break
            log.warning(
                "slack webhook answered %s (%s); retrying %sin %.1f s",
                status if status is not None else "nothing",
                error,
                "a critical alert until it is delivered, next " if critical else "",
                wait,
            )
            if self.sleep(wait):  # the consumer's stop event: it is stopping
                error = f"{error} (the consumer stopped)"
                break
        self.failed += 1
        log.error(
            "slack webhook: alert not delivered after %d attempt(s): HTTP %s %s",
            attempts,
            status if status is not None else "-",
            error,
        )
        return PostResult(False, status, attempts, error)


MAX_RETRY_AFTER_S = 300.0  # a longer Retry-After is waited this long, then asked again


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (Slack sends an integer), at most MAX_RETRY_AFTER_S: a critical
    alert waits it out with every alert queued behind it, so a day's Retry-After (or "inf")
    would hold them all for that long. An HTTP date or garbage is ignored."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if math.isnan(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


def stand_in(host: str = "127.0.0.1", port: int = 0) -> Any:
    """A local stand-in for Slack: prints the text of every POSTed alert, answers 200 ok.

    For trying the alerts consumer on one machine (docs/operations.md); not for production.
    """
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                text = json.loads(body)["text"]
            except (ValueError, KeyError, TypeError):
                self.send_response(400)
                self.end_headers()
                self.wfile.write(b"invalid_payload")
                return
            print(f"[webhook] {text}", flush=True)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    if not _loopback(host):
        raise ValueError(f"the stand-in binds to a loopback address only, not {host!r}")
    return HTTPServer((host, port), Handler)


def serve(host: str, port: int) -> None:
    httpd = stand_in(host, port)
    print(f"[webhook] listening on http://{host}:{httpd.server_address[1]}/", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m consumers.slack", description="a local Slack webhook stand-in"
    )
    ap.add_argument("command", choices=["serve"])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8099)
    args = ap.parse_args()
    serve(args.host, args.port)
