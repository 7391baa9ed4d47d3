"""Meta-labelling (López de Prado): a primary rule says the side, a second model says
whether that call will be right.

The primary is a baseline rule (models/baselines.py) fit on the training rows; the
secondary is the stacked ensemble (models/ensemble.py) fit on the same rows with the
label "the primary's call was right". P(up) is then q when the primary calls up and
1 - q when it calls down, q the secondary's calibrated probability, so the flow's
confidence is the secondary's belief in the primary's call.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import Any

import numpy as np

from models.baselines import RuleModel
from models.ensemble import fit_ensemble
from operators.predict import FastEnsemble, StackedEnsemble


class MetaLabelModel:
    """P(up) from a primary rule's call and a secondary model's P(the call is right)."""

    def __init__(self, primary: RuleModel, secondary: dict[str, Any]) -> None:
        self.primary, self.secondary = primary, secondary

    @cached_property
    def _model(self) -> StackedEnsemble:
        return StackedEnsemble(self.secondary)

    @cached_property
    def _fast(self) -> FastEnsemble:
        return FastEnsemble.of(self._model)

    def __getstate__(self) -> dict[str, Any]:
        return {"primary": self.primary, "secondary": self.secondary}

    def predict_one(self, x: np.ndarray) -> float:
        """P(up) of one row through the secondary's numpy path (the flow's per bar)."""
        q = self._fast.predict(x)[0]
        return q if self.primary.calls(x.reshape(1, -1))[0] == 1 else 1.0 - q

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        q = self._model.predict_proba(x)[0]
        p = np.where(self.primary.calls(x) == 1, q, 1.0 - q)
        return np.column_stack([1.0 - p, p])


def fit_metalabel(
    primary: RuleModel,
    x: np.ndarray,
    y: np.ndarray,
    end_ms: np.ndarray,
    purge_ms: int,
    seed: int,
    hgb_max_iter: int,
    log: Callable[[str], None] = lambda _: None,
) -> MetaLabelModel:
    right = (primary.calls(x) == y).astype(int)
    fitted = fit_ensemble(x, right, end_ms, purge_ms, seed, log, hgb_max_iter)
    return MetaLabelModel(primary, fitted.bundle)
