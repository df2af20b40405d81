"""The trained_head strategy: a multinomial logistic head over example embeddings, with its
confidence calibrated by temperature scaling on a slice of the examples it was not fitted on.

Fitting is scikit-learn's L-BFGS over the example vectors (seconds for Banking77 on 2 cores);
the temperature is the one scalar that minimises the log-loss of the held-out slice, so a
confidence of 0.8 means right about 80% of the time on texts like the examples. The fitted
numbers (weights, bias, temperature, label names) are plain arrays, cached on disk beside the
example vectors, so a restart or a reload of unchanged settings skips the fit.
"""

from __future__ import annotations

import hashlib
import io
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

# Temperatures beyond e^±4 mean the fit went wrong, not that the head is that far off.
LOG_TEMPERATURE_BOUNDS = (-4.0, 4.0)


class HeadSettings(BaseModel):
    """How trained_head fits its head; part of the cache key, so changing it refits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    c: float = Field(
        default=100.0,
        gt=0,
        description="Inverse L2 strength (scikit-learn's C): larger fits the examples closer.",
    )
    calibration_share: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="Share of each label's examples held out from fitting to calibrate the "
        "confidence on; 0 leaves the head's own softmax uncalibrated.",
    )
    max_iter: int = Field(default=1000, gt=0, description="L-BFGS iterations at most.")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class LinearHead:
    """`softmax((queries @ weights + bias) / temperature)` over `names`."""

    names: list[str]
    weights: np.ndarray
    bias: np.ndarray
    temperature: float

    def logits(self, queries: np.ndarray) -> np.ndarray:
        return queries.astype(np.float32) @ self.weights + self.bias

    def scores(self, queries: np.ndarray) -> np.ndarray:
        return softmax(self.logits(queries).astype(np.float64) / self.temperature)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            names=np.array(self.names),
            weights=self.weights,
            bias=self.bias,
            temperature=np.array(self.temperature),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, content: bytes) -> LinearHead:
        with np.load(io.BytesIO(content)) as arrays:
            return cls(
                names=[str(name) for name in arrays["names"]],
                weights=arrays["weights"],
                bias=arrays["bias"],
                temperature=float(arrays["temperature"]),
            )


def calibration_split(
    texts: Sequence[str], labels: Sequence[str], share: float
) -> tuple[list[int], list[int]]:
    """(fit, calibration) row indices: per label, the `share` of its rows whose texts hash
    lowest, so the split is stratified and the same on every run; each label keeps at least
    one row to fit on."""
    by_label: dict[str, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_label[label].append(index)
    fit, calibration = [], []
    for rows in by_label.values():
        rows.sort(key=lambda i: hashlib.sha256(texts[i].encode()).digest())
        held = min(round(share * len(rows)), len(rows) - 1)
        calibration += rows[:held]
        fit += rows[held:]
    return sorted(fit), sorted(calibration)


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature T minimising the mean negative log-likelihood of softmax(logits / T)."""
    from scipy.optimize import minimize_scalar

    rows = np.arange(len(targets))
    logits = logits.astype(np.float64)

    def negative_log_likelihood(log_temperature: float) -> float:
        scaled = logits / np.exp(log_temperature)
        scaled -= scaled.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(scaled).sum(axis=1))
        return float((log_norm - scaled[rows, targets]).mean())

    found = minimize_scalar(
        negative_log_likelihood, bounds=LOG_TEMPERATURE_BOUNDS, method="bounded"
    )
    return float(np.exp(found.x))


def fit_linear_head(
    vectors: np.ndarray, texts: Sequence[str], labels: Sequence[str], settings: HeadSettings
) -> LinearHead:
    """Fits the head on the examples outside the calibration slice, then its temperature on
    the slice. CPU-bound for seconds: run it off the event loop."""
    from sklearn.linear_model import LogisticRegression

    names = sorted(set(labels))
    position = {name: i for i, name in enumerate(names)}
    targets = np.array([position[label] for label in labels])
    fit, calibration = calibration_split(texts, labels, settings.calibration_share)
    model = LogisticRegression(C=settings.c, max_iter=settings.max_iter)
    model.fit(vectors[fit], targets[fit])
    coef, intercept = model.coef_, model.intercept_
    if len(names) == 2:
        # Two classes come back as one logit for the second; softmax([0, z]) is its sigmoid.
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.array([0.0, intercept[0]])
    head = LinearHead(
        names=names,
        weights=coef.T.astype(np.float32),
        bias=intercept.astype(np.float32),
        temperature=1.0,
    )
    if not calibration:
        return head
    temperature = fit_temperature(head.logits(vectors[calibration]), targets[calibration])
    return LinearHead(head.names, head.weights, head.bias, temperature)
