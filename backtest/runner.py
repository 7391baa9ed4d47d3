"""Run `dataflows.ensemble` itself over file sources with an end, once per preset and slippage.

In process, through `bytewax.testing.run_main`: the same `build_flow` that
`python -m bytewax.run dataflows.ensemble` runs, configured by the same `ENSEMBLE_*`
variables (parsed by `Settings.from_env` from a mapping, never from this process's
environment), writing the same JSON-lines files. In process rather than a subprocess per
run so the model loads once, the progress bar can count the input records the source
hands to the flow, and a failure surfaces as the flow's own exception.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backtest.progress import Progress
from dataflows.io import RawMessage, market_input
from dataflows.settings import Settings
from marketdata.files import FileSpec, FileSpecError, RowBlock
from operators.config import ConfigError, preset
from operators.predict import DEFAULT_ARTIFACT

PROGRESS_EVERY = 512  # input records between progress updates


class BacktestError(ValueError):
    """The backtest cannot run as asked; the message says what was wrong and what to do."""


@dataclass(frozen=True)
class Dataset:
    """One replay input: `generator`, or comma-separated file specs (as ENSEMBLE_INPUT)."""

    label: str
    input: str

    @classmethod
    def parse(cls, text: str) -> Dataset:
        text = text.strip()
        if text == "generator":
            return cls("generator", text)
        specs = [s.strip() for s in text.split(",") if s.strip()]
        if not specs:
            raise BacktestError(f"--data {text!r} names no file")
        try:
            parsed = [FileSpec.parse(s) for s in specs]
        except FileSpecError as e:
            raise BacktestError(f"--data: {e}") from None
        main = next((p for p in parsed if p.kind != "funding"), parsed[0])
        return cls(main.path.stem, ",".join(specs))

    @property
    def files(self) -> list[FileSpec]:
        if self.input == "generator":
            return []
        return [FileSpec.parse(s) for s in self.input.split(",")]


def unique_labels(datasets: list[Dataset]) -> list[Dataset]:
    """Datasets whose labels are unique (a repeated label gets -2, -3 ...)."""
    seen: dict[str, int] = {}
    out = []
    for d in datasets:
        n = seen.get(d.label, 0) + 1
        seen[d.label] = n
        out.append(d if n == 1 else Dataset(f"{d.label}-{n}", d.input))
    return out


@dataclass(frozen=True)
class Options:
    """What every run shares: overrides on top of each preset, generator and model settings."""

    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 7
    days: float = 6.0
    model_dir: Path = DEFAULT_ARTIFACT


@dataclass(frozen=True)
class Run:
    """One replay: a dataset, a preset, slippage added on top of the preset's own."""

    dataset: Dataset
    preset: str
    slippage_add_bps: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.dataset.label} {self.preset} +{self.slippage_add_bps:g} bps"

    def slippage_bps(self, opts: Options) -> float:
        base = preset(self.preset).with_overrides(opts.overrides).execution.slippage_bps
        return base + self.slippage_add_bps

    def env(self, opts: Options, out_dir: Path, wall_clock: bool = False) -> dict[str, str]:
        """The ENSEMBLE_* variables of this run, as `python -m bytewax.run` would see them."""
        overrides = dict(opts.overrides)
        if self.slippage_add_bps:
            overrides["execution.slippage_bps"] = self.slippage_bps(opts)
        return {
            "ENSEMBLE_INPUT": self.dataset.input,
            "ENSEMBLE_PRESET": self.preset,
            "ENSEMBLE_OVERRIDES": json.dumps(overrides, sort_keys=True),
            "ENSEMBLE_SEED": str(opts.seed),
            "ENSEMBLE_DAYS": repr(opts.days),
            "ENSEMBLE_MODEL_DIR": str(opts.model_dir),
            "ENSEMBLE_OUT": str(out_dir),
            "ENSEMBLE_CLOCK": "wall" if wall_clock else "event",
        }

    def settings(self, opts: Options, out_dir: Path, wall_clock: bool = False) -> Settings:
        try:
            return Settings.from_env(self.env(opts, out_dir, wall_clock))
        except ConfigError as e:
            raise BacktestError(f"{self.label}: {e}") from None


class _CountedMessages:
    """The flow's own market messages, counted into the progress bar as the source reads."""

    def __init__(self, settings: Settings, progress: Progress) -> None:
        self.settings, self.progress = settings, progress

    def __iter__(self) -> Iterator[RawMessage | RowBlock]:
        pending = 0
        for item in market_input(self.settings):
            pending += len(item) if isinstance(item, RowBlock) else 1
            if pending >= PROGRESS_EVERY:
                self.progress.advance(pending)
                pending = 0
            yield item
        self.progress.advance(pending)


def count_messages(settings: Settings) -> int:
    """Input records the flow will read (one pass over the files)."""
    return sum(len(it) if isinstance(it, RowBlock) else 1 for it in market_input(settings))


def replay(settings: Settings, progress: Progress | None = None) -> str:
    """Run the dataflow over `settings`' input into its out dir; returns what it printed."""
    # Imported here: importing the flow module builds its default flow from os.environ.
    from bytewax.testing import run_main

    from dataflows.ensemble import build_flow

    messages = None if progress is None else _CountedMessages(settings, progress)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run_main(build_flow(settings, messages))  # type: ignore[arg-type]
    return printed.getvalue()
