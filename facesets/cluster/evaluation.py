"""Scoring a clustering against labels: BCubed, pairwise F1 and the adjusted Rand index.

Used by ``scripts/eval_clusters.py`` (labeled photos) and ``scripts/bench_cluster.py`` (synthetic faces).
Items with no prediction (a photo whose subject face was not found) count as singletons.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Scores:
    bcubed_precision: float
    bcubed_recall: float
    bcubed_f1: float
    pairwise_f1: float
    ari: float

    def as_dict(self) -> dict[str, float]:
        return {name: round(float(value), 4) for name, value in self.__dict__.items()}


def score(predicted: Sequence[Any] | NDArray[Any], truth: Sequence[Any] | NDArray[Any]) -> Scores:
    pred = np.unique(np.asarray(predicted), return_inverse=True)[1].ravel()
    true = np.unique(np.asarray(truth), return_inverse=True)[1].ravel()
    count = len(pred)
    if count == 0:
        return Scores(1.0, 1.0, 1.0, 1.0, 1.0)
    pairs, joint = np.unique(np.stack([pred, true], axis=1), axis=0, return_counts=True)
    pred_size = np.bincount(pred).astype(np.float64)
    true_size = np.bincount(true).astype(np.float64)
    joint_f = joint.astype(np.float64)
    precision = float((joint_f**2 / pred_size[pairs[:, 0]]).sum() / count)
    recall = float((joint_f**2 / true_size[pairs[:, 1]]).sum() / count)
    f1 = 2 * precision * recall / (precision + recall)
    together = _pairs(joint_f).sum()
    pred_pairs, true_pairs = _pairs(pred_size).sum(), _pairs(true_size).sum()
    pairwise = 2 * together / (pred_pairs + true_pairs) if pred_pairs + true_pairs else 1.0
    expected = pred_pairs * true_pairs / _pairs(np.float64(count))
    top = (pred_pairs + true_pairs) / 2
    ari = (together - expected) / (top - expected) if top != expected else 1.0
    return Scores(precision, recall, f1, float(pairwise), float(ari))


def _pairs(sizes: Any) -> Any:
    return sizes * (sizes - 1) / 2


def subject_face(boxes: NDArray[np.float32], width: int, height: int) -> int:
    """InsightFace's ``max_num`` rule: the largest area minus twice the squared offset from the image centre."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    dx = (boxes[:, 0] + boxes[:, 2]) / 2 - width / 2
    dy = (boxes[:, 1] + boxes[:, 3]) / 2 - height / 2
    return int(np.argmax(area - 2.0 * (dx * dx + dy * dy)))
