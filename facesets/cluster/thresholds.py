"""Per-model clustering thresholds: embedding spaces differ, so distances are looked up, never assumed.

All thresholds are cosine distances (1 - cosine similarity) between L2-normalised embeddings:

    match      a new face joins an existing identity when it is this close to the identity's centre
    cluster    two single faces farther apart than this never join (``--cluster-distance``); by default
               (``None``) it is learned from each library, see :mod:`facesets.cluster.calibration`
    export     members farther than this from their identity's centre are left out of the exported set
               (``--export-distance``); by default (``None``) a member stays when the clustering's own
               threshold for one face against the rest of its cluster holds
    closeness  the ``graph`` algorithm's relative-closeness gate (a ratio, not a distance)

A model is recognised by its recognizer file's BLAKE3, or, for published packs whose bytes we cannot ship,
by the recognizer's file name. A cache from a model without an entry needs the match distance on the command
line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..base.errors import ConfigError
from ..models.packs import PackIdentity


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    match: float
    cluster: float | None = None
    export: float | None = None
    closeness: float = 0.5
    # the recognizer's impostor similarity (mean, sd), measured on labeled photos: used for small libraries
    impostors: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {name: value for name, value in asdict(self).items() if name != "impostors"}


# buffalo_l (w600k_r50): the original face-sets values. fr_feature (the MobileFaceNet recognizer of the
# scrfd*-mbf packs): measured on ../shared/data with scripts/eval_clusters.py, see the README. The cluster
# distance is not in the table: it depends on the library, not only on the model.
BY_RECOGNIZER_BLAKE3: Mapping[str, Thresholds] = {
    # fr_feature.onnx of scrfd500m-mbf and scrfd2.5g-mbf
    "6ec10ab554eabb842af42e98cec3fc7192c72ec828ed510e216749b2aad90a3c": Thresholds(
        match=0.55, impostors=(0.013, 0.100)
    ),
}
BY_RECOGNIZER_FILE: Mapping[str, Thresholds] = {
    "w600k_r50.onnx": Thresholds(match=0.45),
}


def model_thresholds(identity: PackIdentity) -> Thresholds | None:
    return BY_RECOGNIZER_BLAKE3.get(identity.recognizer_blake3) or BY_RECOGNIZER_FILE.get(identity.recognizer)


def resolve_thresholds(identity: PackIdentity, overrides: Mapping[str, float | None]) -> Thresholds:
    """The table's values for ``identity`` with the options the user gave on top."""
    given: dict[str, Any] = {name: value for name, value in overrides.items() if value is not None}
    for name, value in given.items():
        _check_range(name, float(value))
    base = model_thresholds(identity)
    if base is not None:
        return replace(base, **given)
    if "match" not in given:
        raise ConfigError(
            f"no default thresholds for the model {identity.describe()}: pass --match-distance "
            "(a cosine distance to an identity's centre; the clustering thresholds are learned from the library; "
            "scripts/eval_clusters.py measures a model on a labeled folder)"
        )
    return Thresholds(**given)


def _check_range(name: str, value: float) -> None:
    upper = 1.0 if name == "closeness" else 2.0
    option = "--closeness" if name == "closeness" else f"--{name}-distance"
    if not 0.0 <= value <= upper:
        raise ConfigError(f"{option} must be between 0 and {upper:g}, got {value:g}")
