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
        self.model_id: str = self.manifest["model_id"]
        self.horizon_bars: int = int(self.manifest["horizon_bars"])

    def predict(self, features: dict[str, float]) -> Prediction:
        x = np.array([[features[name] for name in FEATURES]], dtype=float)
        p_up = float(self.meta.predict_proba(x)[0, 1])
        p_bma = None if self.bma is None else float(self.bma.predict_proba(x)[0, 1])
        return Prediction(p_up, p_bma)


@lru_cache(maxsize=4)
def load_runtime(artifact_dir: str) -> ModelRuntime:
    """One runtime per artifact per process."""
    return ModelRuntime(Path(artifact_dir))
