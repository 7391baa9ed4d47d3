"""Send an operator command to the running flow: `python -m dataflows.control`.

    python -m dataflows.control --bootstrap HOST:PORT reset_kill_switch \\
        --symbol BTC-PERP --operator alice --reason "drawdown reviewed, resuming"

Commands: halt, resume (lifts only an operator's halt), reset_kill_switch (lifts any halt
and re-arms the limits from current equity), shadow_on, shadow_off. The command is
validated exactly as the flow will validate it, signed for PREFIX.control with the
operator's Ed25519 private key (ENSEMBLE_OPERATOR_KEY_FILE: a file holding it, or
ENSEMBLE_OPERATOR_KEY: the base64 key itself; never in the repository), Avro-encoded,
keyed by symbol ("*" = every symbol) and published to PREFIX.control. The flow refuses
unsigned, badly signed (or signed for another topic), unknown, replayed or stale commands
(operators/commands.py).

    python -m dataflows.control keygen --out ~/.ensemble/alice.key   # once per operator

writes a new private key (mode 600) and prints the public key line for the flow's
ENSEMBLE_OPERATOR_KEYS_FILE file. The flow applies it at the first 5m close at or
after its event time (`--at`, default now) and writes a `repro` event `control` naming
who, why, when and the state before and after: that event is the receipt.

    python -m dataflows.control receipt cmd-... --bootstrap HOST:PORT [--wait 60]

reads PREFIX.repro (the one topic the operator principal may read) for that receipt, one
per symbol the command applied to, waiting up to `--wait` seconds; exit 1 if none came.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import Producer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataflows.environment import add_kafka_arguments, environ, kafka_arguments
from dataflows.kafka_security import confluent_config
from dataflows.settings import strategy_from_env
from operators.commands import private_key_from_b64, public_key_b64, sign
from operators.config import ConfigError
from operators.events import CONTROL_COMMANDS, InvalidRecord, parse_control
from schemas.codec import encode, with_defaults

SCHEMA = "control_command"


def command_record(
    command: str,
    symbol: str,
    operator: str,
    reason: str,
    at_ms: int | None = None,
    strategy_id: str = "ensemble_1_1",
    command_id: str | None = None,
    key: Ed25519PrivateKey | None = None,
    prefix: str = "ensemble",
) -> dict:
    """A control record the flow reading `PREFIX.control` will accept, signed for that topic
    with `key` (default: the operator's key from the environment); InvalidRecord names what
    is wrong."""
    rec = {
        "symbol": symbol,
        "ts_event_ms": int(time.time() * 1000) if at_ms is None else at_ms,
        "strategy_id": strategy_id,
        "command": command,
        "operator": operator,
        "reason": reason,
        "command_id": command_id or f"cmd-{uuid.uuid4().hex[:16]}",
    }
    symbols = frozenset() if symbol == "*" else frozenset({symbol})
    parse_control(rec, symbols)
    if not operator.strip() or not reason.strip():
        raise InvalidRecord("an operator and a reason are required: the command is audited")
    rec["signature"] = sign(rec, key or operator_key(), f"{prefix}.control")
    return with_defaults(SCHEMA, rec)


def operator_key(env: dict[str, str] | None = None) -> Ed25519PrivateKey:
    """The operator's private key: ENSEMBLE_OPERATOR_KEY_FILE (base64 or PEM) or
    ENSEMBLE_OPERATOR_KEY (base64). InvalidRecord says what is missing or wrong."""
    env = environ(env)  # the ENSEMBLE_CONFIG file under the environment
    path = env.get("ENSEMBLE_OPERATOR_KEY_FILE", "").strip()
    try:
        if path:
            text = Path(path).expanduser().read_text()
            if text.lstrip().startswith("-----BEGIN"):
                key = serialization.load_pem_private_key(text.encode(), password=None)
                if not isinstance(key, Ed25519PrivateKey):
                    raise ValueError("the PEM key is not an Ed25519 key")
                return key
            return private_key_from_b64(text)
        if env.get("ENSEMBLE_OPERATOR_KEY", "").strip():
            return private_key_from_b64(env["ENSEMBLE_OPERATOR_KEY"])
    except (OSError, ValueError) as e:
        raise InvalidRecord(f"cannot read the operator's signing key: {e}") from None
    raise InvalidRecord(
        "no signing key: set ENSEMBLE_OPERATOR_KEY_FILE (a file with your Ed25519 private key) "
        "or ENSEMBLE_OPERATOR_KEY; `python -m dataflows.control keygen --out FILE` makes one"
    )


def keygen(out: Path, operator: str) -> str:
    """Write a new private key to `out` (mode 600); returns the public key's config line."""
    key = Ed25519PrivateKey.generate()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(key.private_bytes_raw()).decode("ascii") + "\n")
    return json.dumps({operator: public_key_b64(key)})


def send(bootstrap: str, prefix: str, rec: dict, timeout_s: float = 30.0) -> tuple[int, int]:
    """Publish one command; returns (partition, offset) once the broker acknowledged it."""
    delivered: list = []
    producer = Producer(confluent_config(bootstrap, **{"enable.idempotence": True}))
    producer.produce(
        f"{prefix}.control",
        value=encode(SCHEMA, rec),
        key=rec["symbol"].encode(),
        on_delivery=lambda err, msg: delivered.append((err, msg)),
    )
    producer.flush(timeout_s)
    if not delivered:
        raise RuntimeError(f"no acknowledgement from {bootstrap} within {timeout_s:.0f} s")
    err, msg = delivered[0]
    if err is not None:
        raise RuntimeError(f"the broker refused the command: {err.str()}")
    return msg.partition(), msg.offset()


RECEIPT_POLL_S = 2.0  # how often `receipt` reads PREFIX.repro again while it waits


def receipts(bootstrap: str, prefix: str, command_id: str, wait_s: float = 0.0) -> list[dict]:
    """The flow's `repro` events `control` for `command_id` (one per symbol it applied to;
    a copy the flow published again after a restart counted once), reading PREFIX.repro
    to its end, again every RECEIPT_POLL_S until one is there or `wait_s` has passed."""
    from consumers.stream import KafkaSettings, read_to_end

    kafka = KafkaSettings.from_values(bootstrap, prefix)
    deadline = time.monotonic() + wait_s
    while True:
        found = {
            (rec["symbol"], rec["ts_event_ms"]): rec
            for _, rec in read_to_end(kafka, ["repro"], client_id="ensemble-control")
            if rec.get("event") == "control"
            and (rec.get("command") or {}).get("command_id") == command_id
        }
        if found or time.monotonic() >= deadline:
            return [found[k] for k in sorted(found)]
        time.sleep(min(RECEIPT_POLL_S, max(0.0, deadline - time.monotonic())))


def receipt_line(rec: dict) -> str:
    """One receipt as the operator reads it: what, for whom, when, by whom, what changed."""
    cmd, change = rec["command"], json.loads(rec.get("change_json") or "{}")
    before, after = change.get("before") or {}, change.get("after") or {}
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(rec["ts_event_ms"] / 1000))
    return (
        f"{cmd['command']} for {rec['symbol']} at the {when} UTC close, by {cmd['operator']} "
        f"({cmd.get('signer') or 'unsigned'}): {before.get('trading_state', '?')} -> "
        f"{after.get('trading_state', '?')}; {change.get('result', '?')}"
    )


def _receipt_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m dataflows.control receipt")
    ap.add_argument("command_id", help="the id `control` printed when it sent the command")
    add_kafka_arguments(ap)
    ap.add_argument("--wait", type=float, default=0.0, help="seconds to wait for it")
    args = ap.parse_args(argv)
    kafka_arguments(ap, args)
    from kafka.errors import KafkaError  # kafka-python, as the consumers read telemetry

    from consumers.stream import TopicsMissing

    try:
        found = receipts(args.bootstrap, args.prefix, args.command_id, args.wait)
    except (ValueError, ConnectionError, TimeoutError, TopicsMissing, KafkaError) as e:
        print(f"control: cannot read {args.prefix}.repro: {e}", file=sys.stderr)
        return 2
    if not found:
        print(
            f"no receipt for {args.command_id} in {args.prefix}.repro: not applied yet. The "
            "flow holds a command until the market reaches its event time; a refused one is "
            f"a dead letter on {args.prefix}.dead_letters with its reason",
            file=sys.stderr,
        )
        return 1
    for rec in found:
        print(receipt_line(rec))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["receipt"]:
        return _receipt_main(argv[1:])
    if argv[:1] == ["keygen"]:
        kp = argparse.ArgumentParser(prog="python -m dataflows.control keygen")
        kp.add_argument("--out", required=True, type=Path, help="private key file (new)")
        kp.add_argument("--operator", default="OPERATOR", help="name for the config line")
        args = kp.parse_args(argv[1:])
        try:
            line = keygen(args.out, args.operator)
        except FileExistsError:
            print(f"control: {args.out} exists; not overwritten", file=sys.stderr)
            return 2
        print(f"private key written to {args.out}; add to ENSEMBLE_OPERATOR_KEYS_FILE: {line}")
        return 0
    ap = argparse.ArgumentParser(prog="python -m dataflows.control", description=__doc__)
    ap.add_argument("command", choices=CONTROL_COMMANDS)
    add_kafka_arguments(ap)
    ap.add_argument("--symbol", default="*", help='a symbol, or "*" for every symbol')
    ap.add_argument("--operator", required=True, help="who sends it (audited)")
    ap.add_argument("--reason", required=True, help="why (audited)")
    ap.add_argument("--at", type=int, default=None, help="event time, epoch ms (default: now)")
    ap.add_argument(
        "--strategy-id",
        help="the flow's strategy_id (default: the flow's own, from ENSEMBLE_PRESET or "
        "STRATEGY_ID and ENSEMBLE_OVERRIDES, as the flow reads them); a command for another "
        "is refused as foreign",
    )
    args = ap.parse_args(argv)
    kafka_arguments(ap, args)
    if args.strategy_id is None:
        try:
            args.strategy_id = strategy_from_env(environ()).strategy_id
        except ConfigError as e:
            ap.error(f"the flow's strategy_id: {e}")
    try:
        rec = command_record(
            args.command,
            args.symbol,
            args.operator,
            args.reason,
            args.at,
            args.strategy_id,
            prefix=args.prefix,
        )
        partition, offset = send(args.bootstrap, args.prefix, rec)
    except (InvalidRecord, RuntimeError, ValueError) as e:
        print(f"control: not sent: {e}", file=sys.stderr)
        return 2
    print(
        f"sent {rec['command']} for {rec['symbol']} as {rec['command_id']} "
        f"(event time {rec['ts_event_ms']}) to {args.prefix}.control [{partition}@{offset}]; "
        f"`python -m dataflows.control receipt {rec['command_id']} --prefix {args.prefix} "
        "--wait 60` shows the flow's receipt once it is applied"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
