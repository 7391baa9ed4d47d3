"""The README's research paragraph quotes `make evaluate`'s results: it must quote the
figures models/research/results.json holds, not those of an earlier run."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_quotes_the_halted_bars_of_the_4h_model_from_the_results():
    results = json.loads((ROOT / "models/research/results.json").read_text())
    row = results["walk_forward"]["rows"]["stack_v2_h48"]["pnl"]["ensemble_1_1"]
    halted = row["top_outcomes"]["trading_state_halted"]
    text = " ".join((ROOT / "README.md").read_text().split())
    quoted = re.search(r"sits halted by a kill-switch for (\d+) bars", text)
    assert quoted is not None, "the README no longer quotes the 4 h model's halted bars"
    assert int(quoted.group(1)) == halted
