"""What the flow's start-up imports (issue 16): nothing it does not use.

Each check runs a fresh interpreter, since this test process has imported everything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _loaded_after(
    code: str, modules: tuple[str, ...], env: dict[str, str] | None = None
) -> list[str]:
    """Which of `modules` a fresh interpreter has imported after running `code`."""
    probe = (
        f"{code}\nimport json, sys\n"
        f"print(json.dumps(sorted(m for m in {modules!r} if m in sys.modules)))"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("ENSEMBLE_")}
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        env=base | (env or {}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_loading_the_shipped_model_and_predicting_imports_no_scikit_learn():
    code = (
        "from operators.features import FEATURES\n"
        "from operators.predict import DEFAULT_ARTIFACT, load_runtime\n"
        "rt = load_runtime(str(DEFAULT_ARTIFACT))\n"
        "assert 0 < rt.predict(dict.fromkeys(FEATURES, 0.0)).p_up < 1\n"
    )
    assert _loaded_after(code, ("sklearn", "scipy")) == []


def test_the_pickle_path_still_imports_scikit_learn():
    """The probe above can see scikit-learn: reading model.pkl imports it."""
    code = (
        "from operators.predict import DEFAULT_ARTIFACT, ModelRuntime\n"
        "ModelRuntime(DEFAULT_ARTIFACT, use_fast_file=False)\n"
    )
    assert _loaded_after(code, ("sklearn", "scipy")) == ["scipy", "sklearn"]


def test_the_flow_on_its_embedded_input_imports_no_file_reader_kafka_python_or_model_library(
    tmp_path,
):
    """pandas and pyarrow are for input files, kafka-python for the consumers, aiohttp for
    the live feed, scikit-learn for model.pkl: a run on the generator needs none of them."""
    heavy = ("sklearn", "scipy", "pandas", "pyarrow", "kafka", "aiohttp")
    assert _loaded_after("import dataflows.ensemble", heavy, {"ENSEMBLE_OUT": str(tmp_path)}) == []


@pytest.mark.parametrize("maker", ["bool", "text"])
def test_a_run_over_a_plain_parquet_trade_file_imports_no_pandas(tmp_path, maker):
    """The usual input (a parquet trade file in time order) is read straight from Arrow:
    pandas (0.3 s) is for files that need sorting or have bad rows."""
    import pandas as pd

    n = 3_000
    pd.DataFrame(
        {
            "timestamp": pd.to_datetime(1_704_067_200_000 + 97 * pd.RangeIndex(n), unit="ms"),
            "trade_id": pd.RangeIndex(n),
            "price": 42_000.0 + (pd.RangeIndex(n) % 7),
            "quantity": 0.01 + (pd.RangeIndex(n) % 5) / 100,
            "buyer_maker": (pd.RangeIndex(n) % 3 == 0)
            if maker == "bool"
            else pd.Series(["True", "false", "False", "true"] * (n // 4) + ["true"] * (n % 4)),
        }
    ).to_parquet(tmp_path / "t.parquet")
    code = (
        "from bytewax.run import cli_main\n"
        "import dataflows.ensemble as ens\n"
        "cli_main(ens.flow, workers_per_process=1)\n"
        "import json\n"
        f"bars = open({str(tmp_path / 'out' / 'bars.jsonl')!r}).read().splitlines()\n"
        "assert sum(json.loads(b)['count'] for b in bars if '\"5m\"' in b) == 3_000, bars\n"
    )
    env = {
        "ENSEMBLE_INPUT": f"trades:{tmp_path / 't.parquet'}",
        "ENSEMBLE_OUT": str(tmp_path / "out"),
    }
    assert _loaded_after(code, ("pandas", "sklearn", "scipy"), env) == []
