"""Add `fast.npz` to an artifact trained before it existed: `python -m models.fast DIR ...`.

`fast.npz` holds the arrays `FastEnsemble` predicts from (operators/predict.py), so the
flow starts without scikit-learn and without unpickling `model.pkl`. This command reads
`model.pkl` (so it needs the scikit-learn the model was trained with), writes `fast.npz`
beside it and records its sha256 in the manifest as `fast_sha256`; `model.pkl` and its
checksum stay. Running it again writes the same bytes. An artifact whose base learners
have no numpy twin (the research rules of models/baselines.py, models/metalabel.py) is
refused and keeps predicting through `model.pkl`. `python -m models.train` writes
`fast.npz` itself.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from operators.predict import FAST_FILE, ArtifactError, FastEnsemble, ModelRuntime, write_fast


def add_fast(artifact: Path) -> str:
    """Write `fast.npz` into `artifact` and its sha256 into the manifest; returns the sha256."""
    try:
        # reads model.pkl with the flow's checks: checksum, scikit-learn version, types
        rt = ModelRuntime(artifact, use_fast_file=False)
    except ArtifactError as e:
        raise SystemExit(f"models.fast: {e}") from None
    try:
        twin = FastEnsemble.of(rt.model)
        sha = write_fast(artifact, twin, rt.features)
    except TypeError as e:
        raise SystemExit(
            f"models.fast: {artifact}: {e}; this artifact keeps predicting through model.pkl"
        ) from None
    manifest_path = artifact / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["fast_sha256"] = sha
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return sha


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="+", type=Path, help="artifact directories")
    for artifact in ap.parse_args(argv).artifacts:
        print(f"{artifact / FAST_FILE}: sha256 {add_fast(artifact)}")


if __name__ == "__main__":
    main()
