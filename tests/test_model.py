"""The model: the loader's refusals, the fast path's parity, reproducible training.

Training tests run on a small slice of the real 5m perp candles (`max_bars`), so each
training takes a few seconds.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.ensemble import FitError, fit_ensemble
from models.evaluation import brier_decomposition, paired_brier_difference, quantile_bins
from models.train import TrainConfig, baselines, train
from operators.features import FEATURES
from operators.predict import (
    BUNDLE_FORMAT,
    DEFAULT_ARTIFACT,
    FAST_FILE,
    ArtifactError,
    ModelRuntime,
    sha256_file,
)
from tests.conftest import shared_file

PERP_5M = "binance_usdm_BTC_USDT_2025-09-19_2025-10-27_5m.json"


# -- the loader ---------------------------------------------------------------------------
@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    dst = tmp_path / "artifact"
    shutil.copytree(DEFAULT_ARTIFACT, dst)
    return dst


def _edit_manifest(path: Path, edit) -> None:
    m = json.loads((path / "manifest.json").read_text())
    edit(m)
    (path / "manifest.json").write_text(json.dumps(m))


@pytest.fixture
def pickle_artifact(artifact: Path) -> Path:
    """The shipped artifact without fast.npz: the runtime reads model.pkl (as for the
    research rules, which have no numpy twin)."""
    (artifact / FAST_FILE).unlink()
    _edit_manifest(artifact, lambda m: m.pop("fast_sha256"))
    return artifact


def test_the_shipped_artifact_loads_and_predicts_probabilities():
    rt = ModelRuntime(DEFAULT_ARTIFACT)
    pred = rt.predict(dict.fromkeys(FEATURES, 0.0) | {"rsi_14": 50.0, "bb_pband": 0.5})
    assert 0.0 < pred.p_up < 1.0 and pred.p_up_bma is not None and 0.0 < pred.p_up_bma < 1.0
    assert rt.fast is not None, "the shipped model must have the numpy fast path"
    assert rt.horizon_bars == 3 and rt.model_id.startswith("stack-")


def test_the_shipped_manifest_matches_its_model_and_this_code():
    m = json.loads((DEFAULT_ARTIFACT / "manifest.json").read_text())
    assert m["model_sha256"] == sha256_file(DEFAULT_ARTIFACT / "model.pkl")
    assert m["fast_sha256"] == sha256_file(DEFAULT_ARTIFACT / FAST_FILE)
    assert m["features"] == list(FEATURES)
    assert (DEFAULT_ARTIFACT / "card.md").is_file()
    assert (DEFAULT_ARTIFACT / "calibration.png").is_file()
    assert all(d["spec"].startswith("candles:../shared/data/") for d in m["data"])


def test_a_missing_artifact_says_how_to_make_one(tmp_path):
    with pytest.raises(ArtifactError, match="python -m models.train"):
        ModelRuntime(tmp_path)


def test_a_changed_model_file_is_refused(artifact):
    with open(artifact / "model.pkl", "ab") as f:
        f.write(b"tampered")
    with pytest.raises(ArtifactError, match="sha256 .* but its manifest says"):
        ModelRuntime(artifact)


def test_a_different_feature_list_is_refused(artifact):
    _edit_manifest(artifact, lambda m: m.update(features=list(reversed(FEATURES))))
    with pytest.raises(ArtifactError, match="differ from this code's .* retrain"):
        ModelRuntime(artifact)


def test_a_missing_feature_is_refused(artifact):
    _edit_manifest(artifact, lambda m: m.update(features=list(FEATURES[:-1])))
    with pytest.raises(ArtifactError, match="retrain the model"):
        ModelRuntime(artifact)


def test_another_scikit_learn_version_is_refused(pickle_artifact):
    _edit_manifest(pickle_artifact, lambda m: m["versions"].update({"scikit-learn": "0.0.1"}))
    with pytest.raises(ArtifactError, match="trained with scikit-learn 0.0.1"):
        ModelRuntime(pickle_artifact)


def test_the_fast_file_needs_no_scikit_learn_but_the_estimators_still_check_its_version(
    artifact,
):
    _edit_manifest(artifact, lambda m: m["versions"].update({"scikit-learn": "0.0.1"}))
    rt = ModelRuntime(artifact)
    assert 0.0 < rt.predict(dict.fromkeys(FEATURES, 0.0)).p_up < 1.0
    with pytest.raises(ArtifactError, match="trained with scikit-learn 0.0.1"):
        rt.model  # noqa: B018 (reading the estimators is what is refused)


def test_an_unreadable_manifest_is_refused(artifact):
    (artifact / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        ModelRuntime(artifact)


def test_a_bundle_of_another_format_is_refused(pickle_artifact):
    with open(pickle_artifact / "model.pkl", "wb") as f:
        pickle.dump({"format": "something-else/9"}, f)
    sha = sha256_file(pickle_artifact / "model.pkl")
    _edit_manifest(pickle_artifact, lambda m: m.update(model_sha256=sha))
    with pytest.raises(ArtifactError, match=f"not '{BUNDLE_FORMAT}'"):
        ModelRuntime(pickle_artifact)


# -- the fast file ------------------------------------------------------------------------
def _fast_arrays(artifact: Path) -> dict[str, np.ndarray]:
    with np.load(artifact / FAST_FILE, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _rewrite_fast(artifact: Path, arrays: dict[str, np.ndarray]) -> None:
    """A changed fast.npz whose checksum the manifest is made to agree with."""
    np.savez(artifact / FAST_FILE, **arrays)
    sha = sha256_file(artifact / FAST_FILE)
    _edit_manifest(artifact, lambda m: m.update(fast_sha256=sha))


def _respec(artifact: Path, **changes) -> None:
    arrays = _fast_arrays(artifact)
    spec = json.loads(str(arrays["spec"])) | changes
    _rewrite_fast(artifact, arrays | {"spec": np.array(json.dumps(spec))})


def test_the_shipped_artifact_predicts_from_its_fast_file_without_reading_the_pickle():
    rt = ModelRuntime(DEFAULT_ARTIFACT)
    rt.predict(dict.fromkeys(FEATURES, 0.0))
    assert rt.fast is not None and rt._model is None
    assert rt.model.bases and rt._model is not None  # read when asked for


ROOT = Path(__file__).resolve().parents[1]
_PREDICT_BITS = """
import json
import numpy as np
from operators.predict import DEFAULT_ARTIFACT, ModelRuntime
rt = ModelRuntime(DEFAULT_ARTIFACT)
rng = np.random.default_rng(3)
print(json.dumps([[p.hex() for p in rt.fast.predict(rng.normal(size=len(rt.features)))]
                  for _ in range(300)]))
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="OpenBLAS's x86 kernels")
def test_predictions_are_the_same_bits_whichever_blas_kernel_the_cpu_gets():
    """OpenBLAS picks its kernel by CPU, and each sums a dot product in its own order: the
    shipped model's probabilities differed in their last bits between an Intel and an AMD
    machine, and so did every output file that holds one. Prescott's kernel runs on every
    x86-64 CPU; this machine's own is the other run."""
    bits = []
    for core in ("Prescott", ""):
        env = {**os.environ, "OPENBLAS_CORETYPE": core, "PYTHONPATH": str(ROOT)}
        run = subprocess.run(
            [sys.executable, "-c", _PREDICT_BITS], env=env, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        bits.append(json.loads(run.stdout))
    assert bits[0] == bits[1]


def test_a_changed_fast_file_is_refused(artifact):
    data = bytearray((artifact / FAST_FILE).read_bytes())
    data[len(data) // 2] ^= 1  # one bit of one array
    (artifact / FAST_FILE).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"fast.npz has sha256 .* but its manifest says"):
        ModelRuntime(artifact)


def test_a_fast_file_listed_but_missing_is_refused(artifact):
    (artifact / FAST_FILE).unlink()
    with pytest.raises(ArtifactError, match=r"listed in the manifest but cannot be read"):
        ModelRuntime(artifact)


def test_a_fast_file_the_manifest_does_not_list_is_refused(artifact):
    _edit_manifest(artifact, lambda m: m.pop("fast_sha256"))
    with pytest.raises(ArtifactError, match=r"not in its manifest .*python -m models.fast"):
        ModelRuntime(artifact)


def test_a_fast_file_of_another_format_is_refused(artifact):
    _respec(artifact, format="ensemble-fast/9")
    with pytest.raises(ArtifactError, match="format 'ensemble-fast/9', not 'ensemble-fast/1'"):
        ModelRuntime(artifact)


def test_a_fast_file_made_for_other_features_is_refused(artifact):
    from operators.features import FEATURES_V2

    _edit_manifest(artifact, lambda m: m.update(features=list(FEATURES_V2)))  # a known set
    with pytest.raises(ArtifactError, match="was made for features .* but the manifest lists"):
        ModelRuntime(artifact)


def test_a_fast_file_missing_an_array_is_refused(artifact):
    arrays = _fast_arrays(artifact)
    del arrays["base1.threshold"]
    _rewrite_fast(artifact, arrays)
    with pytest.raises(ArtifactError, match="fast.npz lacks 'base1.threshold'"):
        ModelRuntime(artifact)


def test_a_fast_file_whose_arrays_do_not_fit_together_is_refused(artifact):
    arrays = _fast_arrays(artifact)
    arrays["meta_coef"] = arrays["meta_coef"][:1]  # one weight for two base learners
    _rewrite_fast(artifact, arrays)
    with pytest.raises(ArtifactError, match="fast.npz: shapes .* not aligned"):
        ModelRuntime(artifact)


def test_a_fast_file_holding_pickled_objects_is_refused_without_unpickling(artifact):
    arrays = _fast_arrays(artifact)
    arrays["weights"] = np.array([{"a": 1}, None], dtype=object)  # np.savez pickles these
    _rewrite_fast(artifact, arrays)
    with pytest.raises(ArtifactError, match="not a ensemble-fast/1 file .*allow_pickle=False"):
        ModelRuntime(artifact)


def test_writing_the_fast_file_again_gives_the_same_bytes(artifact):
    from models.fast import add_fast

    before = (artifact / FAST_FILE).read_bytes()
    (artifact / FAST_FILE).unlink()
    _edit_manifest(artifact, lambda m: m.pop("fast_sha256"))
    assert add_fast(artifact) == sha256_file(DEFAULT_ARTIFACT / FAST_FILE)
    assert (artifact / FAST_FILE).read_bytes() == before
    assert ModelRuntime(artifact).fast is not None


def test_a_research_rule_artifact_gets_no_fast_file(tmp_path):
    from models.baselines import RuleModel, rule_bundle
    from models.evaluate import write_artifact
    from models.fast import add_fast
    from operators.features import FEATURES_V2

    rule = RuleModel(0.6, FEATURES_V2.index("ret_3"), -1)
    art = write_artifact(tmp_path / "r", rule_bundle("r", rule), FEATURES_V2, 3, "r")
    with pytest.raises(SystemExit, match="no numpy twin .* keeps predicting through model.pkl"):
        add_fast(art)
    assert not (art / FAST_FILE).exists()
    assert ModelRuntime(art).predict(dict.fromkeys(FEATURES_V2, 0.0)).p_up == pytest.approx(0.4)


def _same_both_ways(rows: list[dict[str, float]]) -> None:
    """fast.npz and model.pkl give the very same floats (==, not a tolerance)."""
    from_file = ModelRuntime(DEFAULT_ARTIFACT)
    from_pickle = ModelRuntime(DEFAULT_ARTIFACT, use_fast_file=False)
    assert from_file._model is None and from_pickle._model is not None
    differ = [
        (row, a, b)
        for row in rows
        for a, b in [(from_file.predict(row), from_pickle.predict(row))]
        if not (a.p_up == b.p_up and a.p_up_bma == b.p_up_bma)
    ]
    assert not differ, f"{len(differ)} of {len(rows)} rows differ, first {differ[0]}"
    assert from_file._model is None, "the fast runtime read model.pkl"


def test_the_fast_file_predicts_bit_identically_to_the_pickle_on_random_rows():
    x = _feature_rows(20_000, seed=11)
    _same_both_ways([dict(zip(FEATURES, row, strict=True)) for row in x])


@pytest.mark.realdata
def test_the_fast_file_predicts_bit_identically_to_the_pickle_on_real_features():
    import itertools

    from marketdata.files import FileSpec, file_records
    from models.dataset import contexts

    rows = []
    for name in ("binance_spot_BTC_USDT_2024-07-26_2024-08-25_1m.feather", PERP_5M):
        spec = FileSpec.parse(f"candles:{shared_file(name)}")
        ctxs = contexts(file_records([spec]), frozenset({spec.symbol}))
        rows += [c.features for c in itertools.islice(ctxs, 3000) if c.features is not None]
    assert len(rows) > 5000
    _same_both_ways(rows)


def test_a_missing_or_non_finite_feature_is_an_error_naming_it():
    rt = ModelRuntime(DEFAULT_ARTIFACT)
    row = dict.fromkeys(FEATURES, 0.0)
    with pytest.raises(ValueError, match="'ret_48' is missing"):
        rt.predict({k: v for k, v in row.items() if k != "ret_48"})
    with pytest.raises(ValueError, match="non-finite features .*'atr_14': nan"):
        rt.predict(row | {"atr_14": math.nan})


# -- fast path ----------------------------------------------------------------------------
def _feature_rows(n: int, seed: int) -> np.ndarray:
    """Rows near and far outside the training distribution (tails exercise every leaf)."""
    rng = np.random.default_rng(seed)
    m = json.loads((DEFAULT_ARTIFACT / "manifest.json").read_text())
    assert m["features"] == list(FEATURES)
    rt = ModelRuntime(DEFAULT_ARTIFACT)
    scaler = rt.model.bases[0][1].steps[0][1]  # the logistic regression's StandardScaler
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 0.01)
    return scaler.mean_ + rng.standard_t(3, size=(n, len(FEATURES))) * scale


def test_the_numpy_path_equals_scikit_learn_predict_proba():
    rt = ModelRuntime(DEFAULT_ARTIFACT)
    x = _feature_rows(3000, seed=3)
    ref_p, ref_b = rt.model.predict_proba(x)
    fast = np.array([rt.fast.predict(row) for row in x])
    assert np.max(np.abs(fast[:, 0] - ref_p)) < 1e-12
    assert np.max(np.abs(fast[:, 1] - ref_b)) < 1e-12
    assert np.std(ref_p) > 1e-3, "the rows must move the model for the check to mean much"


def test_each_base_learner_fast_path_equals_its_predict_proba():
    from operators.predict import FastEnsemble

    rt = ModelRuntime(DEFAULT_ARTIFACT)
    fast = FastEnsemble.of(rt.model)
    x = _feature_rows(1000, seed=4)
    x[::7, 2] = np.nan  # gradient boosting routes missing values; the numpy walk must too
    for (_, est), f in zip(rt.model.bases[1:], fast.bases[1:], strict=True):
        ref = est.predict_proba(x)[:, 1]
        assert np.max(np.abs(np.array([f(row) for row in x]) - ref)) < 1e-12


# -- evaluation ---------------------------------------------------------------------------
def test_the_brier_decomposition_is_exact_for_forecasts_with_few_values():
    rng = np.random.default_rng(0)
    p = rng.choice([0.3, 0.45, 0.5, 0.62, 0.8], size=5000)
    y = (rng.random(5000) < p).astype(int)
    d = brier_decomposition(y, p)
    assert d["reliability"] - d["resolution"] + d["uncertainty"] == pytest.approx(
        d["brier"], abs=1e-12
    )
    assert d["resolution"] > 0.01 and d["reliability"] < 0.01


def test_equal_forecasts_share_a_bin():
    p = np.array([0.5] * 50 + [0.6] * 3 + list(np.linspace(0.61, 0.9, 47)))
    bins = quantile_bins(p)
    assert len(set(bins[:50])) == 1 and len(set(bins[50:53])) == 1


def test_a_better_forecast_has_a_negative_paired_difference():
    rng = np.random.default_rng(1)
    p = rng.uniform(0.2, 0.8, 4800)
    y = (rng.random(4800) < p).astype(int)
    d = paired_brier_difference(y, p, np.full(4800, 0.5))
    assert d["diff"] < 0 and d["z"] < -5


def test_baselines_are_fit_on_the_training_rows_only():
    from models.dataset import Labelled

    def rows(y, past):
        n = len(y)
        return Labelled(
            np.zeros((n, len(FEATURES))), np.array(y), np.zeros(n), np.arange(n), np.array(past)
        )

    train_rows = rows([1, 1, 1, 0], [0.1, -0.1, 0.2, -0.3])  # majority up; momentum right 3/4
    test_rows = rows([0, 1], [0.5, -0.5])
    b = baselines(train_rows, test_rows)
    assert list(b["majority"][1]) == [1, 1] and list(b["majority"][0]) == [0.75, 0.75]
    assert list(b["momentum"][1]) == [1, 0] and list(b["momentum"][0]) == [0.75, 0.25]


# -- training -----------------------------------------------------------------------------
def _small(out: Path, **kw) -> TrainConfig:
    path = shared_file(PERP_5M)
    return TrainConfig(data=(f"candles:{path}",), max_bars=2500, folds=2, out=out, **kw)


def _same(a, b, path="metrics") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, z) in enumerate(zip(a, b, strict=True)):
            _same(x, z, f"{path}[{i}]")
    elif isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-12, path
    else:
        assert a == b, path


@pytest.fixture(scope="module")
def trained_twice(tmp_path_factory):
    quiet = lambda _msg: None  # noqa: E731
    runs = []
    for name in ("a", "b"):
        out = tmp_path_factory.mktemp(name)
        runs.append((out, train(_small(out), log=quiet)))
    return runs


@pytest.mark.realdata
def test_training_twice_with_the_same_seed_gives_the_same_metrics_and_features(trained_twice):
    (out_a, a), (out_b, b) = trained_twice
    assert a["features"] == b["features"] == list(FEATURES)
    _same(a["metrics"], b["metrics"])
    _same(a["model"], b["model"], "model")
    assert a["fast_sha256"] == b["fast_sha256"]
    ra, rb = ModelRuntime(out_a), ModelRuntime(out_b)
    x = _feature_rows(200, seed=9)
    for row in x:
        assert ra.fast.predict(row) == rb.fast.predict(row)


@pytest.mark.realdata
def test_training_writes_a_loadable_artifact_with_manifest_and_card(trained_twice):
    out, m = trained_twice[0]
    rt = ModelRuntime(out)
    assert rt.model_id == m["model_id"] and rt.horizon_bars == 3
    assert m["model_sha256"] == sha256_file(out / "model.pkl")
    assert m["fast_sha256"] == sha256_file(out / FAST_FILE) and rt._model is None
    from_pickle = ModelRuntime(out, use_fast_file=False)
    for row in _feature_rows(500, seed=10):
        assert rt.fast.predict(row) == from_pickle.fast.predict(row)
    assert m["data"][0]["sha256"] == sha256_file(shared_file(PERP_5M))
    assert m["data"][0]["feature_parity_max_abs"] <= 1e-9
    for key in ("training_span_ms", "horizon_bars", "dead_zone_bps", "versions", "metrics"):
        assert key in m
    assert set(m["metrics"]["walk_forward"]) >= {"meta", "meta_raw", "bma", "majority", "momentum"}
    card = (out / "card.md").read_text()
    for heading in ("## Out-of-sample scores", "## Calibration", "## Hit rate by confidence"):
        assert heading in card
    assert ("Calibration helped" in card) != ("Calibration did not help" in card)
    assert (out / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    w = m["model"]["bma_weights"]
    assert abs(sum(w.values()) - 1.0) < 1e-12 and min(w.values()) >= 0.0


@pytest.mark.realdata
def test_every_fold_is_fit_only_on_rows_before_its_purge_gap(trained_twice):
    _, m = trained_twice[0]
    purge_ms = m["validation"]["purge_bars"] * 300_000
    folds = m["metrics"]["per_fold"]
    assert len(folds) == 2
    for f in folds:
        assert f["train_end_ms"] + purge_ms <= f["test_span_ms"][0]
    assert folds[0]["test_span_ms"][1] < folds[1]["test_span_ms"][0]


def test_a_purge_gap_shorter_than_the_horizon_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="--purge-bars 2 must be >= --horizon 3"):
        TrainConfig(purge_bars=2, horizon_bars=3, out=tmp_path)


def test_too_few_rows_to_fit_say_so():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(120, len(FEATURES))), rng.integers(0, 2, 120)
    with pytest.raises(FitError, match="need at least 50 rows of both classes"):
        fit_ensemble(x, y, np.arange(120) * 300_000, 3_600_000, seed=1)


# -- research harness (models/evaluate.py) -------------------------------------------------
RESEARCH_5M = "binance_usdm_BTC_USDT_2025-08-01_2026-02-19_5m.feather"


def test_the_runtime_loads_a_v2_artifact_and_reads_its_features_in_its_order(tmp_path):
    from models.baselines import fit_baseline, rule_bundle
    from models.evaluate import write_artifact
    from operators.features import FEATURES_V2

    x = np.zeros((4, len(FEATURES_V2)))
    x[:, FEATURES_V2.index("ret_3")] = [0.01, 0.02, -0.01, -0.02]
    y = np.array([0, 0, 1, 0])  # the reversal call is right on 3 of 4 rows
    rule = fit_baseline("reversal_15m", x, y, FEATURES_V2)
    assert rule.p_up == pytest.approx(0.75)
    art = write_artifact(tmp_path / "a", rule_bundle("r", rule), FEATURES_V2, 3, "r")
    rt = ModelRuntime(art)
    assert rt.fast is not None
    row = dict.fromkeys(FEATURES_V2, 0.0)
    assert rt.predict(row | {"ret_3": 0.004}).p_up == pytest.approx(0.25)
    assert rt.predict(row | {"ret_3": -0.004}).p_up_bma == pytest.approx(0.75)
    with pytest.raises(ValueError, match="'ret_96' is missing"):
        rt.predict(dict.fromkeys(FEATURES, 0.0))


def test_ece_is_zero_when_calibrated_and_the_offset_when_biased():
    from models.evaluate import ece

    rng = np.random.default_rng(3)
    p = rng.uniform(0.2, 0.8, 200_000)
    y = (rng.uniform(size=p.size) < p).astype(int)
    assert ece(y, p) < 0.005
    assert ece(y, np.clip(p + 0.1, 0, 1)) == pytest.approx(0.1, abs=0.005)


@pytest.fixture(scope="module")
def research_ctxs():
    shared_file(RESEARCH_5M)
    from models.evaluate import research_contexts

    return research_contexts()


@pytest.mark.realdata
def test_no_walk_forward_row_or_label_reaches_into_the_test_block(research_ctxs):
    from models.evaluate import CANDIDATES, TEST_BLOCK_START_MS, dev_and_block, fold_bounds

    for c in CANDIDATES:
        dev, block = dev_and_block(research_ctxs, c.label, c.features)
        horizon_ms = c.label.horizon_bars * 300_000
        assert dev.end_ms.max() + horizon_ms < TEST_BLOCK_START_MS, c.name
        assert block.end_ms.min() >= TEST_BLOCK_START_MS and len(block) > 5000, c.name
    closes = np.array([x.bar.end_ms for x in research_ctxs if x.bar.end_ms < TEST_BLOCK_START_MS])
    bounds = fold_bounds(closes)
    assert bounds[-1][1] < TEST_BLOCK_START_MS
    assert all(b1 < a2 for (_, b1), (a2, _) in zip(bounds, bounds[1:], strict=False))


@pytest.mark.realdata
def test_fold_pnl_comes_from_the_dataflow_with_fee_and_slippage(tmp_path):
    """A rule confident enough to trade: its round trips and PnL are the flow's own."""
    from backtest import records
    from models.baselines import RuleModel, rule_bundle
    from models.evaluate import (
        FEE_BPS,
        SLIPPAGE_BPS,
        Spans,
        candle_frame,
        flow_run,
        funding_frame,
        write_artifact,
    )
    from operators.features import FEATURES_V2

    shared_file(RESEARCH_5M)
    rule = RuleModel(0.9, FEATURES_V2.index("ret_12"), 1)  # conf 0.9: the model arms trade
    art = write_artifact(tmp_path / "a", rule_bundle("m", rule), FEATURES_V2, 3, "m")
    start = int(pd.Timestamp("2025-11-03T00:00Z").value // 1_000_000)
    spec = Spans(candle_frame(), funding_frame(), tmp_path).input(
        start, start + 2 * 86_400_000, 150
    )
    out = tmp_path / "run"
    got = flow_run(spec, art, "ensemble_1_0", out, 3, warmup_bars=150)
    run = records.load(out)
    assert got["round_trips"] > 0 and got["days"] == pytest.approx(2.0, abs=0.01)
    assert {c["fee_bps"] for c in run.costs} == {FEE_BPS}
    assert {c["slippage_bps"] for c in run.costs} == {SLIPPAGE_BPS}
    final = run.summary["symbols"]["BTC-PERP"]["equity"]
    assert got["net_pnl_usd"] == pytest.approx(final - got["initial_equity_usd"], abs=0.01)


def test_a_meta_labelling_artifact_predicts_the_same_in_the_flow_as_in_batch(tmp_path):
    from models.baselines import fit_baseline, rule_bundle
    from models.evaluate import write_artifact
    from models.metalabel import fit_metalabel
    from operators.features import FEATURES_V2

    rng = np.random.default_rng(4)
    n = 3000
    x = rng.normal(size=(n, len(FEATURES_V2)))
    y = (x[:, FEATURES_V2.index("ret_3")] + rng.normal(size=n) < 0).astype(int)
    end_ms = np.arange(n, dtype=np.int64) * 300_000
    primary = fit_baseline("reversal_15m", x, y, FEATURES_V2)
    ml = fit_metalabel(primary, x, y, end_ms, 3_600_000, 7, 20)
    art = write_artifact(tmp_path / "m", rule_bundle("m", ml), FEATURES_V2, 3, "m")
    rt = ModelRuntime(art)
    assert rt.fast is not None, "a research artifact must not fall back to scikit-learn per bar"
    batch = rt.model.predict_proba(x[:50])[0]
    flow = [rt.predict(dict(zip(FEATURES_V2, row, strict=True))).p_up for row in x[:50]]
    np.testing.assert_allclose(flow, batch, atol=1e-9)
    calls = primary.calls(x[:50])
    assert np.mean((batch > 0.5) == (calls == 1)) > 0.5  # mostly the primary's side


def test_triple_barrier_labels_the_first_barrier_touched_and_leaves_out_ties_and_timeouts():
    from models.dataset import first_touch

    b = math.log(1.01)  # barriers at 101 and 100 / 1.01
    assert first_touch(100.0, [(100.5, 99.5), (101.0, 100.2), (100.0, 98.0)], b) == 1
    assert first_touch(100.0, [(100.5, 99.0), (102.0, 100.2)], b) == 0
    assert first_touch(100.0, [(100.5, 99.5), (100.9, 99.2)], b) is None  # neither: left out
    assert first_touch(100.0, [(101.5, 98.5)], b) is None  # both in one bar: ambiguous
    assert first_touch(100.0, [(101.5, 99.5)], 0.0) is None
