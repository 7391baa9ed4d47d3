"""Operator commands are signed, fresh and used once: who may change the strategy's state.

A command is accepted only if all hold, else it is a dead letter with the typed reason and
never reaches the strategy:

- at decode (stateless, `verify`): it carries an Ed25519 signature (`signature`, base64)
  over `canonical_bytes` of its fields and the control topic it was sent to, made with the
  private key of an operator whose public key is in the configuration (`OperatorKeys`),
  and names this flow's strategy (so a command sent to staging's topic does not verify
  when copied to production's, even with the same strategy and keys);
- per symbol (`CommandGate`, between `by_symbol` and `market`): its `command_id` was not
  seen before (bounded memory), and its event time is not more than `window_ms` behind
  the symbol's market time (the minimum over its input partitions). A command that
  arrives before the flow knows its time, or further ahead of it than the window, is
  held until the flow gets there (at most `MAX_HELD`), then judged.

Private keys never live in the repository: `python -m dataflows.control` reads one from
the environment or a file; tests generate theirs.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from operators.events import ControlCommand, expand_blocks
from operators.watermark import DEFAULT_SOURCE_IDLE_MS, InputPartitions, Progress, latest_by_part

# What is signed: a domain tag, the control topic the command is sent to, then these
# fields as sorted compact JSON (UTF-8), so a signature over anything else (another
# message type, a later format, another deployment's topic) never verifies.
SIGNED_FIELDS = (
    "symbol",
    "ts_event_ms",
    "strategy_id",
    "command",
    "operator",
    "reason",
    "command_id",
)
DOMAIN = b"ensemble-control-command-v2\n"
DEFAULT_WINDOW_MS = 900_000  # a command more than 15 min behind the flow's time is stale
MAX_SEEN_IDS = 100_000  # per symbol; the oldest ids are forgotten first
MAX_HELD = 1_000  # commands held per symbol until the flow reaches their time


class CommandReject(enum.StrEnum):
    """Why a command was refused (the dead letter's reason starts with it)."""

    UNSIGNED = "command_unsigned"
    BAD_SIGNATURE = "command_bad_signature"
    UNKNOWN_OPERATOR = "command_unknown_operator"
    FOREIGN_STRATEGY = "command_foreign_strategy"
    REPLAYED = "command_replayed"
    STALE = "command_stale"
    TOO_MANY_HELD = "command_too_many_held"


class CommandRefused(ValueError):
    def __init__(self, reason: CommandReject, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason


def canonical_bytes(fields: Mapping[str, Any], topic: str) -> bytes:
    """The bytes an operator signs: the control topic (`PREFIX.control`) the command is
    sent to, then the signed fields of the command, canonically."""
    missing = [f for f in SIGNED_FIELDS if f not in fields]
    if missing:
        raise ValueError(f"a command needs {missing} to be signed")
    if not topic or "\n" in topic:
        raise ValueError(f"a command is signed for a control topic, not {topic!r}")
    body = {f: fields[f] for f in SIGNED_FIELDS}
    return (
        DOMAIN
        + topic.encode("utf-8")
        + b"\n"
        + json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")
    )


def sign(fields: Mapping[str, Any], key: Ed25519PrivateKey, topic: str) -> str:
    """The base64 signature to put in the command's `signature` field, for `topic`."""
    return base64.b64encode(key.sign(canonical_bytes(fields, topic))).decode("ascii")


def key_id(public: Ed25519PublicKey) -> str:
    """A short fingerprint of a public key, kept in the audit record as the signer."""
    raw = public.public_bytes_raw()
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def public_key_b64(key: Ed25519PrivateKey) -> str:
    """How a public key is written in the operators' key configuration."""
    return base64.b64encode(key.public_key().public_bytes_raw()).decode("ascii")


def private_key_from_b64(text: str) -> Ed25519PrivateKey:
    """A private key from its base64 raw 32-byte seed (how the CLI reads it)."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
        return Ed25519PrivateKey.from_private_bytes(raw)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"not a base64 Ed25519 private key (32 raw bytes): {e}") from None


@dataclass(frozen=True)
class OperatorKeys:
    """The allowed operators: name -> Ed25519 public key."""

    keys: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str, source: str = "operator keys") -> OperatorKeys:
        """`{"alice": "<base64 raw public key>", ...}`; ValueError naming what is wrong."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}: not JSON ({e.msg})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{source}: must be a JSON object of operator -> public key")
        keys: dict[str, Ed25519PublicKey] = {}
        for name, b64 in raw.items():
            if not isinstance(name, str) or not name.strip() or not isinstance(b64, str):
                raise ValueError(f"{source}: entry {name!r} must be a name and a base64 key")
            try:
                keys[name] = Ed25519PublicKey.from_public_bytes(
                    base64.b64decode(b64, validate=True)
                )
            except (binascii.Error, ValueError):
                raise ValueError(
                    f"{source}: the key of {name!r} is not a base64 Ed25519 public key"
                ) from None
        return cls(keys)


def verify(cmd: ControlCommand, keys: OperatorKeys, strategy_id: str, topic: str) -> ControlCommand:
    """The command with its signer's key id, or CommandRefused (stateless checks); `topic`
    is the control topic it was read from (for a file, the flow's own control topic)."""
    if cmd.strategy_id != strategy_id:
        raise CommandRefused(
            CommandReject.FOREIGN_STRATEGY,
            f"strategy_id {cmd.strategy_id!r} is not this flow's {strategy_id!r}",
        )
    public = keys.keys.get(cmd.operator)
    if public is None:
        raise CommandRefused(
            CommandReject.UNKNOWN_OPERATOR, f"operator {cmd.operator!r} has no configured key"
        )
    if not cmd.signature:
        raise CommandRefused(CommandReject.UNSIGNED, "the command carries no signature")
    try:
        sig = base64.b64decode(cmd.signature, validate=True)
        public.verify(sig, canonical_bytes(cmd.signed_fields(), topic))
    except (binascii.Error, ValueError, InvalidSignature):
        raise CommandRefused(
            CommandReject.BAD_SIGNATURE,
            f"the signature does not verify with {cmd.operator!r}'s key for topic {topic!r} "
            "(changed after signing, another key, or signed for another topic)",
        ) from None
    return cmd.with_signer(f"{cmd.operator}/{key_id(public)}")


@dataclass
class CommandGate:
    """One symbol's replay and staleness checks; its state is part of the flow's snapshot.

    The flow's time is the symbol's market progress over its input partitions
    (operators/watermark.py, the minimum over the active ones), so a partition read ahead
    cannot make a command look stale. A command further ahead of that time than the
    window is held until the flow gets there (the control topic is read ahead of the
    market in a Kafka replay), then judged; one further behind is stale."""

    window_ms: int = DEFAULT_WINDOW_MS
    idle_ms: int = DEFAULT_SOURCE_IDLE_MS
    progress: Progress = field(default_factory=Progress)
    seen: OrderedDict[str, None] = field(default_factory=OrderedDict)
    held: list[ControlCommand] = field(default_factory=list)

    def __setstate__(self, state: dict[str, Any]) -> None:
        latest = state.pop("latest_event_ms", None)  # snapshots from before partitions
        if "progress" not in state:
            state["progress"] = Progress()
            if latest is not None:
                state["progress"].observe(None, latest, 0, 1)
        state.setdefault("idle_ms", DEFAULT_SOURCE_IDLE_MS)
        self.__dict__.update(state)

    def configure(self, window_ms: int, idle_ms: int) -> CommandGate:
        """Bind the running settings (after a resume: a snapshot holds the window and idle
        time of the run that took it, which must not outlive a restart with new ones)."""
        self.window_ms, self.idle_ms = window_ms, idle_ms
        return self

    def on_events(
        self, events: list[Any], now_ms: int = 0, inputs: InputPartitions | None = None
    ) -> list[Any]:
        """`on_event` over a batch, in order (`inputs`: the step's view of the partitions,
        which the batch's partition marks move after it). A batch with no command while
        none is held (almost every batch) only moves each partition's progress, and passes
        on as it is: at quorum 1 a source's progress is its latest event time, so the
        latest of each partition is all that needs observing."""
        if self.held or ControlCommand in set(map(type, events)):
            out: list[Any] = []
            for e in expand_blocks(events):  # a held command may fall due between trades
                out += self.on_event(e, now_ms, inputs)
            return out
        for part, ts_ms in latest_by_part(events).items():
            self.progress.observe(part, ts_ms, now_ms, 1)
        return events

    def on_event(
        self, event: Any, now_ms: int = 0, inputs: InputPartitions | None = None
    ) -> list[Any]:
        """What passes on, in order: events, accepted commands, and CommandRefused for the
        dead letters (with the refused command attached as `.command`). `now_ms` is the
        wall clock and `inputs` the step's view of the Kafka input's partitions."""
        if not isinstance(event, ControlCommand):
            self.progress.observe(event.part, event.ts_event_ms, now_ms, 1)
            return [*self.recheck(now_ms, inputs), event]
        now = self.progress.advance(now_ms, self.idle_ms, inputs)
        if not self._due(event, now):
            # a copy of a seen or held command is refused now, not held: replayed copies
            # (anyone with the control topic's credentials can make them) would otherwise
            # fill the MAX_HELD places and crowd out an operator's next real command
            if event.command_id in self.seen or any(
                c.command_id == event.command_id for c in self.held
            ):
                detail = f"command_id {event.command_id!r} seen before"
                return [_refused(event, CommandReject.REPLAYED, detail)]
            if len(self.held) >= MAX_HELD:
                return [_refused(event, CommandReject.TOO_MANY_HELD, f"{MAX_HELD} already held")]
            self.held.append(event)
            return []
        return [self._judge(event, now)]  # type: ignore[arg-type]

    def recheck(self, now_ms: int, inputs: InputPartitions | None = None) -> list[Any]:
        """No new event: judge the held commands the market time has reached meanwhile.

        A held command was ahead of the flow's time when it arrived, so it is judged as
        of its own time if the time has passed it: with Kafka the time can jump by hours
        at once (a partition that held it back goes idle while the others were read far
        ahead), and that is no reason to call a fresh command stale. The market step does
        not close the symbol's bars past a held command (`InputPartitions.cap_ms`)."""
        if not self.held:
            return []
        now = self.progress.advance(now_ms, self.idle_ms, inputs)
        if now is None:
            return []
        due = [c for c in self.held if self._due(c, now)]
        self.held = [c for c in self.held if not self._due(c, now)]
        return [self._judge(c, min(now, c.ts_event_ms)) for c in due]

    def flush(self) -> list[Any]:
        """End of a finite input: every market event is in, so a held command was reached
        by the market unless it lies after the last market event by more than the window
        (stale); it is judged as of its own time (replays are still refused)."""
        held, self.held = self.held, []
        end = max((c.progress for c in self.progress.sources.values()), default=None)
        out: list[Any] = []
        for cmd in held:
            if end is None or cmd.ts_event_ms > end + self.window_ms:
                where = "no market event" if end is None else f"the last market event {end}"
                detail = (
                    f"event time {cmd.ts_event_ms} is after {where} and the input ended "
                    f"(window {self.window_ms / 1000:.0f} s)"
                )
                out.append(_refused(cmd, CommandReject.STALE, detail))
            else:
                out.append(self._judge(cmd, min(end, cmd.ts_event_ms)))
        return out

    def _due(self, cmd: ControlCommand, now: int | None) -> bool:
        return now is not None and cmd.ts_event_ms <= now + self.window_ms

    def _judge(self, cmd: ControlCommand, now: int) -> Any:
        if cmd.command_id in self.seen:
            return _refused(
                cmd, CommandReject.REPLAYED, f"command_id {cmd.command_id!r} seen before"
            )
        off_ms = cmd.ts_event_ms - now
        if off_ms < -self.window_ms:
            return _refused(
                cmd,
                CommandReject.STALE,
                f"event time {cmd.ts_event_ms} is {off_ms / 1000:+.0f} s from the flow's "
                f"{now} (window {self.window_ms / 1000:.0f} s)",
            )
        self.seen[cmd.command_id] = None
        if len(self.seen) > MAX_SEEN_IDS:
            self.seen.popitem(last=False)
        return cmd


def _refused(cmd: ControlCommand, reason: CommandReject, detail: str) -> CommandRefused:
    e = CommandRefused(reason, detail)
    e.command = cmd  # type: ignore[attr-defined]
    return e
