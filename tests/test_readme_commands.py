"""The README's commands exist: every `make TARGET` it (or a guide in docs/) names is a
target of the Makefile, and the live targets run what the README says they run."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][a-z0-9-]*):", text, flags=re.MULTILINE))


def _dry_run(target: str) -> str:
    """What `make TARGET` would run (nothing is run; setup's recipe may be listed too)."""
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", target],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_make_target_the_guides_name_exists():
    targets = _targets()
    named = {
        (doc.name, t)
        for doc in DOCS
        for t in re.findall(r"`make ([a-z][a-z0-9-]*[a-z0-9])", doc.read_text())
    }
    assert named, "the guides name no make target: the pattern is out of date"
    assert {(d, t) for d, t in named if t not in targets} == set()


def test_make_live_runs_the_ingestor_and_the_flow_on_its_defaults():
    recipe = _dry_run("live")
    assert "-m marketdata.live --venue hyperliquid --symbols BTC-PERP,ETH-PERP" in recipe
    assert "--record out/live/hyperliquid-" in recipe
    assert "-m dataflows.recovery out/live/state" in recipe
    assert "dataflows.ensemble -r out/live/state -s 30 -b 0" in recipe
    binance = subprocess.run(
        ["make", "--no-print-directory", "-n", "live", "LIVE_VENUE=binance"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    assert "--venue binance" in binance and "--record out/live/binance-" in binance


def test_make_bench_live_runs_the_live_feed_benchmark_not_the_live_flow():
    recipe = _dry_run("bench-live")
    assert "bench/bench_live.py" in recipe
    assert "marketdata.live" not in recipe and "dataflows.ensemble" not in recipe
