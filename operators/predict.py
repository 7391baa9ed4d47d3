"""The model at run time: load a trained artifact, refuse a wrong one, predict one bar.

An artifact is a directory with `model.pkl` (a dict of fitted scikit-learn estimators,
format BUNDLE_FORMAT), `fast.npz` (the numbers the one-row numpy path reads, format
FAST_FORMAT) and `manifest.json` (feature names in order, horizon, training span and
data, library versions, metrics, and the sha256 of both files). The loader refuses, with
a message saying what to do, an artifact whose checksums, feature list or file formats do
not match this code. The model is loaded once per worker, never kept in dataflow state.

The flow reads only `fast.npz`: plain arrays read with `np.load(allow_pickle=False)`, so
no code can run on load, and neither scikit-learn nor scipy is imported (0.6 s of
start-up). `model.pkl` is read when the estimators are asked for (`ModelRuntime.model`:
training, evaluation, tests), or to predict with an artifact that has no `fast.npz` (the
research rules of models/baselines.py and models/metalabel.py have no numpy twin to
save). Then the installed scikit-learn must be the one the model was trained with, and
`SafeUnpickler` reads the file: the sha256 in the manifest proves integrity, not
authenticity (both files sit in the same directory), so it may build only the numpy and
scikit-learn types listed in `MODEL_GLOBALS`, and a crafted pickle cannot call
`os.system` or anything else. A retrained model that needs another type fails to load
with a message naming it; add it to `MODEL_GLOBALS` after checking it is a plain
estimator class. `python -m models.fast DIR` adds `fast.npz` to an older artifact.

The model (built by models/train.py): base learners (an L2 logistic regression and a
gradient-boosted tree ensemble) each give P(up); a logistic meta-classifier stacks their
logits; its score is calibrated (isotonic or Platt, chosen on validation) into `p_up`.
`p_up_bma` is the second combination: a posterior-weighted average (Bayesian model
averaging) of the separately calibrated base learners and a no-skill base-rate model.

`StackedEnsemble` evaluates this with scikit-learn, vectorised over rows (training and
tests use it); `FastEnsemble` does the same arithmetic for one row with plain numpy,
because scikit-learn spends about a millisecond validating each call. Their parity is
tested to 1e-12; `FastEnsemble.of` (from the estimators) and `read_fast` (from
`fast.npz`) hold the same arrays, so their predictions are bit-identical (tested).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import operator
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from operators.features import FEATURE_SETS, FEATURES

DEFAULT_ARTIFACT = Path(__file__).resolve().parent.parent / "models" / "artifacts" / "default"
BUNDLE_FORMAT = "ensemble-stack/1"
FAST_FILE = "fast.npz"
FAST_FORMAT = "ensemble-fast/1"
LOGIT_EPS = 1e-6  # base probabilities are clipped to [eps, 1-eps] before the logit


class ArtifactError(RuntimeError):
    """The model artifact cannot be used; the message says why and what to do."""


# Everything model.pkl may reference: numpy's array and RNG reconstruction helpers, the
# estimator classes models/ensemble.py fits (numpy 1.x spells numpy._core as numpy.core),
# and the research harness's own plain-data models (models/baselines.py, metalabel.py).
MODEL_GLOBALS = frozenset(
    {
        ("models.baselines", "RuleModel"),
        ("models.metalabel", "MetaLabelModel"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        *(
            (f"numpy.{core}.{mod}", name)
            for core in ("_core", "core")
            for mod, name in (
                ("multiarray", "_reconstruct"),
                ("multiarray", "scalar"),
                ("numeric", "_frombuffer"),
            )
        ),
        ("numpy.random._pcg64", "PCG64"),
        ("numpy.random._mt19937", "MT19937"),
        ("numpy.random._pickle", "__bit_generator_ctor"),
        ("numpy.random._pickle", "__generator_ctor"),
        ("numpy.random._pickle", "__randomstate_ctor"),
        ("numpy.random.bit_generator", "SeedSequence"),
        ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
        ("sklearn._loss._loss", "CyHalfBinomialLoss"),
        ("sklearn._loss.link", "Interval"),
        ("sklearn._loss.link", "LogitLink"),
        ("sklearn._loss.loss", "HalfBinomialLoss"),
        ("sklearn.ensemble._hist_gradient_boosting.binning", "_BinMapper"),
        (
            "sklearn.ensemble._hist_gradient_boosting.gradient_boosting",
            "HistGradientBoostingClassifier",
        ),
        ("sklearn.ensemble._hist_gradient_boosting.predictor", "TreePredictor"),
        ("sklearn.isotonic", "IsotonicRegression"),
        ("sklearn.linear_model._logistic", "LogisticRegression"),
        ("sklearn.pipeline", "Pipeline"),
        ("sklearn.preprocessing._data", "StandardScaler"),
        ("sklearn.preprocessing._label", "LabelEncoder"),
        # the research harness's baselines and meta-labelling (`make evaluate` replays them
        # through the flow): plain classes holding numbers and a bundle of the types above
        ("models.baselines", "RuleModel"),
        ("models.metalabel", "MetaLabelModel"),
    }
)


class SafeUnpickler(pickle.Unpickler):
    """Unpickles only the globals in MODEL_GLOBALS: no arbitrary code runs on load."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in MODEL_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} is not an allowed model type")
        return super().find_class(module, name)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, LOGIT_EPS, 1.0 - LOGIT_EPS)
    return np.log(q / (1.0 - q))


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    """The rounded products summed exactly (math.fsum), so the same bits on every CPU: a
    BLAS dot product (numpy's `@`) sums in its CPU kernel's own order, and a probability
    then differed in its last bits between an Intel and an AMD machine."""
    if len(a) != len(b):  # the loader's trial prediction finds a fast file's misfit arrays
        raise ValueError(f"shapes ({len(a)},) and ({len(b)},) not aligned")
    return math.fsum(map(operator.mul, a, b))


def _expit(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def calibrate(method: str, model: Any, score: np.ndarray) -> np.ndarray:
    """P(up) from a score with a fitted calibrator: isotonic regression or Platt scaling."""
    if method == "isotonic":
        return np.asarray(model.predict(score), dtype=float)
    if method == "sigmoid":
        return model.predict_proba(score.reshape(-1, 1))[:, 1]
    raise ArtifactError(f"unknown calibration method {method!r}; expected isotonic or sigmoid")


class StackedEnsemble:
    """The bundle's estimators, evaluated with scikit-learn (the reference path)."""

    def __init__(self, bundle: dict[str, Any]) -> None:
        if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
            got = bundle.get("format") if isinstance(bundle, dict) else type(bundle).__name__
            raise ArtifactError(
                f"model bundle format {got!r} is not {BUNDLE_FORMAT!r}, the one this code "
                "reads; retrain with `python -m models.train`"
            )
        self.bases: list[tuple[str, Any]] = list(bundle["bases"])
        self.meta = bundle["meta"]
        self.method: str = bundle["calibration"]["method"]
        self.calibrator = bundle["calibration"]["model"]
        bma = bundle["bma"]
        self.bma_members: list[tuple[str, str, Any]] = list(bma["members"])
        self.bma_weights = np.asarray(bma["weights"], dtype=float)
        self.null_weight = float(bma["null_weight"])
        self.null_p = float(bma["null_p"])

    def base_probs(self, x: np.ndarray) -> np.ndarray:
        """P(up) of each base learner, one column per learner."""
        return np.column_stack([est.predict_proba(x)[:, 1] for _, est in self.bases])

    def meta_score(self, base_p: np.ndarray) -> np.ndarray:
        return self.meta.decision_function(logit(base_p))

    def bma_members_p(self, base_p: np.ndarray) -> np.ndarray:
        z = logit(base_p)
        return np.column_stack(
            [calibrate(m, cal, z[:, i]) for i, (_, m, cal) in enumerate(self.bma_members)]
        )

    def bma(self, base_p: np.ndarray) -> np.ndarray:
        return self.bma_members_p(base_p) @ self.bma_weights + self.null_weight * self.null_p

    def predict_proba(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(p_up, p_up_bma) for every row of x."""
        base_p = self.base_probs(x)
        return calibrate(self.method, self.calibrator, self.meta_score(base_p)), self.bma(base_p)


class _FastLogReg:
    """A fitted StandardScaler + binary LogisticRegression pipeline."""

    KIND = "logreg"
    FIELDS = ("mean", "scale", "coef", "intercept")

    def __init__(
        self, mean: np.ndarray, scale: np.ndarray, coef: np.ndarray, intercept: float
    ) -> None:
        self.mean, self.scale, self.coef = mean, scale, coef
        self.intercept = float(intercept)
        self.coefs = np.asarray(coef, dtype=float).tolist()

    @classmethod
    def of(cls, est: Any) -> _FastLogReg:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        steps = est.steps if isinstance(est, Pipeline) else []
        if not (
            len(steps) == 2
            and isinstance(steps[0][1], StandardScaler)
            and isinstance(steps[1][1], LogisticRegression)
            and list(steps[1][1].classes_) == [0, 1]
        ):
            raise TypeError("not a StandardScaler + binary LogisticRegression pipeline")
        sc, lr = steps[0][1], steps[1][1]
        n = lr.coef_.shape[1]
        return cls(
            sc.mean_ if sc.with_mean else np.zeros(n),
            sc.scale_ if sc.with_std else np.ones(n),
            lr.coef_[0],
            lr.intercept_[0],
        )

    def __call__(self, x: np.ndarray) -> float:
        return _expit(_dot(((x - self.mean) / self.scale).tolist(), self.coefs) + self.intercept)


class _FastTrees:
    """A fitted binary HistGradientBoostingClassifier, every tree walked at once."""

    KIND = "trees"
    FIELDS = (
        "roots",
        "feature",
        "threshold",
        "nan_left",
        "left",
        "right",
        "value",
        "depth",
        "baseline",
    )

    def __init__(
        self,
        roots: np.ndarray,
        feature: np.ndarray,
        threshold: np.ndarray,
        nan_left: np.ndarray,
        left: np.ndarray,
        right: np.ndarray,
        value: np.ndarray,
        depth: int,
        baseline: float,
    ) -> None:
        self.roots, self.feature, self.threshold = roots, feature, threshold
        self.nan_left, self.left, self.right, self.value = nan_left, left, right, value
        self.depth, self.baseline = int(depth), float(baseline)

    @classmethod
    def of(cls, est: Any) -> _FastTrees:
        from sklearn.ensemble import HistGradientBoostingClassifier

        if not (
            isinstance(est, HistGradientBoostingClassifier)
            and est.n_trees_per_iteration_ == 1
            and est.is_categorical_ is None
            and list(est.classes_) == [0, 1]
        ):
            raise TypeError("not a binary, all-numeric HistGradientBoostingClassifier")
        nodes = [p[0].nodes for p in est._predictors]
        offsets = np.cumsum([0] + [len(n) for n in nodes[:-1]])
        allnodes = np.concatenate(nodes)
        rep = np.repeat(offsets, [len(n) for n in nodes])
        is_leaf = allnodes["is_leaf"].astype(bool)
        own = np.arange(len(allnodes), dtype=np.intp)
        # a leaf leads to itself: every tree is walked `depth` steps, no test for leaves
        return cls(
            roots=offsets.astype(np.intp),
            feature=allnodes["feature_idx"].astype(np.intp),
            threshold=allnodes["num_threshold"].astype(float),
            nan_left=allnodes["missing_go_to_left"].astype(bool),
            left=np.where(is_leaf, own, allnodes["left"] + rep).astype(np.intp),
            right=np.where(is_leaf, own, allnodes["right"] + rep).astype(np.intp),
            value=allnodes["value"].astype(float),
            depth=int(allnodes["depth"].max()),
            baseline=float(np.asarray(est._baseline_prediction).ravel()[0]),
        )

    def __call__(self, x: np.ndarray) -> float:
        idx = self.roots
        missing = bool(np.isnan(x).any())  # the runtime's rows are finite (`vector`)
        for _ in range(self.depth):
            v = x[self.feature[idx]]
            go_left = v <= self.threshold[idx]
            if missing:
                go_left = np.where(np.isnan(v), self.nan_left[idx], go_left)
            idx = np.where(go_left, self.left[idx], self.right[idx])
        return _expit(self.baseline + math.fsum(self.value[idx].tolist()))


class _FastIsotonic:
    """A fitted IsotonicRegression that clips scores outside its range."""

    METHOD = "isotonic"
    FIELDS = ("lo", "hi", "xs", "ys")

    def __init__(self, lo: float, hi: float, xs: np.ndarray, ys: np.ndarray) -> None:
        self.lo, self.hi, self.xs, self.ys = float(lo), float(hi), xs, ys

    @classmethod
    def of(cls, model: Any) -> _FastIsotonic:
        if model.out_of_bounds != "clip":
            raise TypeError("isotonic calibrator must clip out-of-range scores")
        return cls(model.X_min_, model.X_max_, model.X_thresholds_, model.y_thresholds_)

    def __call__(self, score: float) -> float:
        return float(np.interp(min(max(score, self.lo), self.hi), self.xs, self.ys))


class _FastPlatt:
    """A fitted Platt scaling: a logistic regression on the score."""

    METHOD = "sigmoid"
    FIELDS = ("a", "b")

    def __init__(self, a: float, b: float) -> None:
        self.a, self.b = float(a), float(b)

    @classmethod
    def of(cls, model: Any) -> _FastPlatt:
        return cls(model.coef_[0, 0], model.intercept_[0])

    def __call__(self, score: float) -> float:
        return _expit(self.a * score + self.b)


_FAST_BASES = {c.KIND: c for c in (_FastLogReg, _FastTrees)}
_FAST_BASE_OF = {"LogisticRegression": _FastLogReg, "HistGradientBoostingClassifier": _FastTrees}
_FAST_CALIBRATORS = {c.METHOD: c for c in (_FastIsotonic, _FastPlatt)}
_FastCalibrator = _FastIsotonic | _FastPlatt


def _fast_calibrator(method: str, model: Any) -> _FastCalibrator:
    maker = _FAST_CALIBRATORS.get(method)
    if maker is None:
        raise TypeError(f"unknown calibration method {method!r}")
    return maker.of(model)


def _fields(part: Any, prefix: str) -> dict[str, np.ndarray]:
    return {prefix + name: np.asarray(getattr(part, name)) for name in part.FIELDS}


def _unfields(maker: Any, arrays: Mapping[str, np.ndarray], prefix: str) -> Any:
    return maker(*(arrays[prefix + name] for name in maker.FIELDS))


class FastEnsemble:
    """`StackedEnsemble.predict_proba` for one row, in plain numpy (parity tested)."""

    def __init__(
        self,
        bases: list[Any],
        meta_coef: np.ndarray,
        meta_intercept: float,
        calibrator: _FastCalibrator,
        members: list[_FastCalibrator],
        weights: np.ndarray,
        null_term: float,
    ) -> None:
        self.bases = bases
        self.meta_coef, self.meta_intercept = meta_coef, float(meta_intercept)
        self.meta_coefs = np.asarray(meta_coef, dtype=float).tolist()
        self.calibrator, self.members = calibrator, members
        self.weights, self.null_term = weights, float(null_term)

    @classmethod
    def of(cls, model: StackedEnsemble) -> FastEnsemble:
        """The numpy twin of fitted estimators; TypeError for one that has none."""
        bases = []
        for _, est in model.bases:
            last = est.steps[-1][1] if hasattr(est, "steps") else est
            maker = _FAST_BASE_OF.get(type(last).__name__)
            if maker is not None:
                bases.append(maker.of(est))
            elif callable(getattr(est, "predict_one", None)):  # research rules bring their own
                bases.append(est.predict_one)
            else:
                raise TypeError(f"no fast path for {type(last).__name__}")
        return cls(
            bases,
            model.meta.coef_[0].astype(float),
            model.meta.intercept_[0],
            _fast_calibrator(model.method, model.calibrator),
            [_fast_calibrator(m, cal) for _, m, cal in model.bma_members],
            model.bma_weights,
            model.null_weight * model.null_p,
        )

    def predict(self, x: np.ndarray) -> tuple[float, float]:
        z = [_logit1(f(x)) for f in self.bases]
        score = _dot(self.meta_coefs, z) + self.meta_intercept
        bma = math.fsum(w * m(zi) for w, m, zi in zip(self.weights, self.members, z, strict=True))
        return self.calibrator(score), bma + self.null_term

    def arrays(self, features: Sequence[str]) -> dict[str, np.ndarray]:
        """Everything `predict` reads, as named arrays (`fast.npz`), with a `spec` saying
        how they fit together; TypeError if a base learner is code, not numbers."""
        for f in self.bases:
            if not isinstance(f, tuple(_FAST_BASES.values())):
                raise TypeError(f"base learner {f!r} has no numpy twin to save")
        spec = {
            "format": FAST_FORMAT,
            "features": list(features),
            "bases": [f.KIND for f in self.bases],
            "calibration": self.calibrator.METHOD,
            "members": [m.METHOD for m in self.members],
        }
        out = {"spec": np.array(json.dumps(spec))}
        for i, f in enumerate(self.bases):
            out |= _fields(f, f"base{i}.")
        out |= _fields(self.calibrator, "calibration.")
        for i, m in enumerate(self.members):
            out |= _fields(m, f"member{i}.")
        out |= {
            "meta_coef": self.meta_coef,
            "meta_intercept": np.asarray(self.meta_intercept),
            "weights": np.asarray(self.weights),
            "null_term": np.asarray(self.null_term),
        }
        return out

    @classmethod
    def from_arrays(cls, spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> FastEnsemble:
        """The twin `arrays` describes; KeyError or ValueError if they do not fit together."""
        methods = (spec["calibration"], *spec["members"])
        unknown = [k for k in spec["bases"] if k not in _FAST_BASES]
        unknown += [m for m in methods if m not in _FAST_CALIBRATORS]
        if unknown:
            raise ValueError(f"unknown base learners or calibrations {unknown}")
        return cls(
            [_unfields(_FAST_BASES[k], arrays, f"base{i}.") for i, k in enumerate(spec["bases"])],
            arrays["meta_coef"],
            arrays["meta_intercept"],
            _unfields(_FAST_CALIBRATORS[spec["calibration"]], arrays, "calibration."),
            [
                _unfields(_FAST_CALIBRATORS[m], arrays, f"member{i}.")
                for i, m in enumerate(spec["members"])
            ],
            arrays["weights"],
            arrays["null_term"],
        )


def fast_bytes(fast: FastEnsemble, features: Sequence[str]) -> bytes:
    """`fast.npz`: the twin's arrays as .npy entries of a zip, the same bytes for the same
    model (fixed entry times, unlike np.savez), so its sha256 names the model."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, arr in sorted(fast.arrays(features).items()):
            with z.open(zipfile.ZipInfo(f"{name}.npy", (1980, 1, 1, 0, 0, 0)), "w") as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)
    return buf.getvalue()


def write_fast(artifact_dir: Path, fast: FastEnsemble, features: Sequence[str]) -> str:
    """Write `fast.npz` into the artifact; returns its sha256 (the manifest's fast_sha256)."""
    data = fast_bytes(fast, features)
    (Path(artifact_dir) / FAST_FILE).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _logit1(p: float) -> float:
    q = min(max(p, LOGIT_EPS), 1.0 - LOGIT_EPS)
    return math.log(q / (1.0 - q))


@dataclass(frozen=True)
class Prediction:
    p_up: float
    p_up_bma: float | None


class ModelRuntime:
    """A checked artifact, ready to predict. `use_fast_file=False` reads model.pkl even
    when the artifact has fast.npz (the parity tests load an artifact both ways)."""

    def __init__(self, artifact_dir: Path, use_fast_file: bool = True) -> None:
        self.dir = Path(artifact_dir)
        manifest_path = self.dir / "manifest.json"
        model_path = self.dir / "model.pkl"
        if not manifest_path.is_file() or not model_path.is_file():
            raise ArtifactError(
                f"no model artifact in {self.dir} (need manifest.json and model.pkl); "
                "train one with `python -m models.train` or point ENSEMBLE_MODEL_DIR at one"
            )
        try:
            self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        except ValueError as e:
            raise ArtifactError(
                f"{manifest_path} is not valid JSON ({e}); restore it or retrain"
            ) from e
        want_sha = self.manifest.get("model_sha256")
        got_sha = sha256_file(model_path)
        if want_sha != got_sha:
            raise ArtifactError(
                f"{model_path} has sha256 {got_sha} but its manifest says {want_sha}: the file "
                "was changed or belongs to another manifest; retrain or restore the artifact"
            )
        features = self.manifest.get("features")
        known = {name: list(fs) for name, fs in FEATURE_SETS.items()}
        if features not in known.values():
            raise ArtifactError(
                f"artifact features {features} differ from this code's {list(FEATURES)} "
                f"(and from every other set it computes: {sorted(known)}); "
                "retrain the model with `python -m models.train`"
            )
        self.features: tuple[str, ...] = tuple(features)
        self.model_id: str = self.manifest["model_id"]
        self.horizon_bars: int = int(self.manifest["horizon_bars"])
        self._model: StackedEnsemble | None = None
        self.fast: FastEnsemble | None
        if use_fast_file and self._has_fast_file():
            self.fast = self._read_fast()
            return
        try:
            self.fast = FastEnsemble.of(self.model)
        except TypeError:  # an estimator without a numpy twin: use scikit-learn
            self.fast = None

    @property
    def model(self) -> StackedEnsemble:
        """The scikit-learn estimators, read from model.pkl on first use."""
        if self._model is None:
            self._model = self._read_pickle()
        return self._model

    def _has_fast_file(self) -> bool:
        path = self.dir / FAST_FILE
        if "fast_sha256" not in self.manifest and path.exists():
            raise ArtifactError(
                f"{path} is not in its manifest (no fast_sha256): it belongs to another "
                f"artifact or was not finished; rerun `python -m models.fast {self.dir}`"
            )
        return "fast_sha256" in self.manifest

    def _read_fast(self) -> FastEnsemble:
        path = self.dir / FAST_FILE
        redo = f"rerun `python -m models.fast {self.dir}` or retrain"
        try:
            data = path.read_bytes()  # checked and parsed from the same bytes
        except OSError as e:
            raise ArtifactError(
                f"{path} is listed in the manifest but cannot be read ({e.strerror}); {redo}"
            ) from None
        want, got = self.manifest["fast_sha256"], hashlib.sha256(data).hexdigest()
        if want != got:
            raise ArtifactError(
                f"{path} has sha256 {got} but its manifest says {want}: the file was changed "
                f"or belongs to another manifest; {redo}"
            )
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {name: z[name] for name in z.files}
            spec = json.loads(str(arrays["spec"]))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise ArtifactError(f"{path} is not a {FAST_FORMAT} file ({e}); {redo}") from None
        if not isinstance(spec, dict):
            raise ArtifactError(f"{path}: its spec {spec!r:.80} is not a JSON object; {redo}")
        if spec.get("format") != FAST_FORMAT:
            raise ArtifactError(
                f"{path} has format {spec.get('format')!r}, not {FAST_FORMAT!r}, the one this "
                f"code reads; {redo}"
            )
        if spec.get("features") != list(self.features):
            raise ArtifactError(
                f"{path} was made for features {spec.get('features')}, but the manifest lists "
                f"{list(self.features)}; {redo}"
            )
        try:
            fast = FastEnsemble.from_arrays(spec, arrays)
            fast.predict(np.zeros(len(self.features)))  # mismatched shapes fail now, not per bar
        except KeyError as e:
            raise ArtifactError(f"{path} lacks {e}; {redo}") from None
        except (ValueError, TypeError, IndexError) as e:
            raise ArtifactError(f"{path}: {e}; {redo}") from None
        return fast

    def _read_pickle(self) -> StackedEnsemble:
        import sklearn  # only here: the flow's fast path never needs it

        model_path = self.dir / "model.pkl"
        want_skl = self.manifest.get("versions", {}).get("scikit-learn")
        if want_skl != sklearn.__version__:
            raise ArtifactError(
                f"artifact was trained with scikit-learn {want_skl}, this is "
                f"{sklearn.__version__}; install scikit-learn=={want_skl} or retrain"
            )
        try:
            with open(model_path, "rb") as f:
                bundle = SafeUnpickler(f).load()
        except pickle.UnpicklingError as e:
            raise ArtifactError(
                f"{model_path} refused: {e} (operators/predict.py MODEL_GLOBALS lists what a "
                "model may contain); retrain, or add the type there after review"
            ) from None
        return StackedEnsemble(bundle)

    def vector(self, features: dict[str, float]) -> np.ndarray:
        """The feature dict as a row in the artifact's order; missing or non-finite raises."""
        try:
            x = np.array([features[name] for name in self.features], dtype=float)
        except KeyError as e:
            raise ValueError(f"feature {e.args[0]!r} is missing from the input") from e
        if not np.isfinite(x).all():
            bad = {
                n: float(v) for n, v in zip(self.features, x, strict=True) if not math.isfinite(v)
            }
            raise ValueError(f"non-finite features {bad}; the model needs finite inputs")
        return x

    def predict(self, features: dict[str, float]) -> Prediction:
        x = self.vector(features)
        if self.fast is not None:
            p_up, p_bma = self.fast.predict(x)
        else:
            p, b = self.model.predict_proba(x.reshape(1, -1))
            p_up, p_bma = float(p[0]), float(b[0])
        return Prediction(p_up, p_bma)


@lru_cache(maxsize=4)
def load_runtime(artifact_dir: str) -> ModelRuntime:
    """One runtime per artifact per process."""
    return ModelRuntime(Path(artifact_dir))
