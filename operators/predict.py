"""The model at run time: load a trained artifact, refuse a wrong one, predict one bar.

An artifact is a directory with `model.pkl` (scikit-learn estimators) and
`manifest.json` (feature names in order, horizon, training span and data, library
versions, metrics, and the sha256 of model.pkl). The loader refuses, with a message
saying what to do, an artifact whose checksum, feature list or scikit-learn version does
not match this code. The model is loaded once per worker, never kept in dataflow state.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import sklearn

from operators.features import FEATURES

DEFAULT_ARTIFACT = Path(__file__).resolve().parent.parent / "models" / "artifacts" / "default"


class ArtifactError(RuntimeError):
    """The model artifact cannot be used; the message says why and what to do."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class LinearIsotonic:
    """A calibrated (isotonic) scaled logistic regression, evaluated with plain numpy.

    scikit-learn spends ~1 ms validating a one-row input; this does the same arithmetic
    (scale, linear score, isotonic interpolation, mean over the calibration folds) in
    microseconds. `from_sklearn` returns None for any other model shape, and the runtime
    then calls predict_proba. Parity with predict_proba is tested.
    """

    def __init__(
        self,
        folds: list[tuple[np.ndarray, np.ndarray, float, np.ndarray, np.ndarray, float, float]],
    ) -> None:
        self.folds = folds

    @classmethod
    def from_sklearn(cls, model: Any) -> LinearIsotonic | None:
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.isotonic import IsotonicRegression
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        if not isinstance(model, CalibratedClassifierCV) or list(model.classes_) != [0, 1]:
            return None
        folds = []
        for cc in model.calibrated_classifiers_:
            est, cals = cc.estimator, cc.calibrators
            if not (
                isinstance(est, Pipeline)
                and len(est.steps) == 2
                and isinstance(est.steps[0][1], StandardScaler)
                and isinstance(est.steps[1][1], LogisticRegression)
                and len(cals) == 1
                and isinstance(cals[0], IsotonicRegression)
                and cals[0].out_of_bounds == "clip"
            ):
                return None
            sc, lr, iso = est.steps[0][1], est.steps[1][1], cals[0]
            mean = sc.mean_ if sc.with_mean else np.zeros(lr.coef_.shape[1])
            scale = sc.scale_ if sc.with_std else np.ones(lr.coef_.shape[1])
            folds.append(
                (
                    mean,
                    scale,
                    float(lr.intercept_[0]),
                    lr.coef_[0],
                    iso.X_thresholds_,
                    iso.X_min_,
                    iso.X_max_,
                    iso.y_thresholds_,
                )
            )
        return cls(folds)

    def p_up(self, x: np.ndarray) -> float:
        total = 0.0
        for mean, scale, intercept, coef, xs, lo, hi, ys in self.folds:
            score = float(((x - mean) / scale) @ coef) + intercept
            p = float(np.interp(min(max(score, lo), hi), xs, ys))
            total += min(p, 1.0)
        return total / len(self.folds)


@dataclass(frozen=True)
class Prediction:
    p_up: float
    p_up_bma: float | None


class ModelRuntime:
    def __init__(self, artifact_dir: Path) -> None:
        self.dir = Path(artifact_dir)
        manifest_path = self.dir / "manifest.json"
        model_path = self.dir / "model.pkl"
        if not manifest_path.is_file() or not model_path.is_file():
            raise ArtifactError(
                f"no model artifact in {self.dir} (need manifest.json and model.pkl); "
                "train one with `python -m models.train` or point ENSEMBLE_MODEL_DIR at one"
            )
        self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        want_sha = self.manifest.get("model_sha256")
        got_sha = sha256_file(model_path)
        if want_sha != got_sha:
            raise ArtifactError(
                f"{model_path} has sha256 {got_sha} but its manifest says {want_sha}: the file "
                "was changed or belongs to another manifest; retrain or restore the artifact"
            )
        features = self.manifest.get("features")
        if features != list(FEATURES):
            raise ArtifactError(
                f"artifact features {features} differ from this code's {list(FEATURES)}; "
                "retrain the model with `python -m models.train`"
            )
        want_skl = self.manifest.get("versions", {}).get("scikit-learn")
        if want_skl != sklearn.__version__:
            raise ArtifactError(
                f"artifact was trained with scikit-learn {want_skl}, this is "
                f"{sklearn.__version__}; install scikit-learn=={want_skl} or retrain"
            )
        with open(model_path, "rb") as f:
            bundle = pickle.load(f)  # noqa: S301 - checksum verified above
        self.meta = bundle["meta"]
        self.bma = bundle.get("bma")
        self.fast_meta = LinearIsotonic.from_sklearn(self.meta)
        self.fast_bma = None if self.bma is None else LinearIsotonic.from_sklearn(self.bma)
        self.model_id: str = self.manifest["model_id"]
        self.horizon_bars: int = int(self.manifest["horizon_bars"])

    def predict(self, features: dict[str, float]) -> Prediction:
        x = np.array([features[name] for name in FEATURES], dtype=float)
        return Prediction(
            self._p_up(self.meta, self.fast_meta, x),
            None if self.bma is None else self._p_up(self.bma, self.fast_bma, x),
        )

    @staticmethod
    def _p_up(model: Any, fast: LinearIsotonic | None, x: np.ndarray) -> float:
        if fast is not None:
            return fast.p_up(x)
        return float(model.predict_proba(x.reshape(1, -1))[0, 1])


@lru_cache(maxsize=4)
def load_runtime(artifact_dir: str) -> ModelRuntime:
    """One runtime per artifact per process."""
    return ModelRuntime(Path(artifact_dir))
