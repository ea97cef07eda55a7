"""Per-model clustering thresholds: embedding spaces differ, so distances are looked up, never assumed.

All thresholds are cosine distances (1 - cosine similarity) between L2-normalised embeddings:

    match      a new face joins an existing identity when it is this close to the identity's centre
    cluster    faces and clusters farther apart than this never join (``--cluster-distance``)
    export     members farther than this from their identity's centre are left out of the exported set
    closeness  the ``graph`` algorithm's relative-closeness gate (a ratio, not a distance)

A model is recognised by its recognizer file's BLAKE3, or, for published packs whose bytes we cannot ship,
by the recognizer's file name. A cache from a model without an entry needs all three distances on the
command line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from .errors import ConfigError
from .packs import PackIdentity


@dataclass(frozen=True)
class Thresholds:
    match: float
    cluster: float
    export: float
    closeness: float = 0.5

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


# buffalo_l (w600k_r50): the original face-sets values. fr_feature (the MobileFaceNet recognizer of the
# scrfd*-mbf packs): calibrated on ../shared/data/faces with scripts/eval_clusters.py, see the README.
BY_RECOGNIZER_BLAKE3: Mapping[str, Thresholds] = {
    # fr_feature.onnx of scrfd500m-mbf and scrfd2.5g-mbf
    "6ec10ab554eabb842af42e98cec3fc7192c72ec828ed510e216749b2aad90a3c": Thresholds(
        match=0.55, cluster=0.80, export=0.65
    ),
}
BY_RECOGNIZER_FILE: Mapping[str, Thresholds] = {
    "w600k_r50.onnx": Thresholds(match=0.45, cluster=0.55, export=0.45),
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
    missing = [name for name in ("match", "cluster", "export") if name not in given]
    if missing:
        options = ", ".join(f"--{name}-distance" for name in missing)
        raise ConfigError(
            f"no default thresholds for the model {identity.describe()}: pass {options} "
            f"(cosine distances; scripts/eval_clusters.py calibrates them on a labeled folder)"
        )
    return Thresholds(**given)


def _check_range(name: str, value: float) -> None:
    upper = 1.0 if name == "closeness" else 2.0
    option = "--closeness" if name == "closeness" else f"--{name}-distance"
    if not 0.0 <= value <= upper:
        raise ConfigError(f"{option} must be between 0 and {upper:g}, got {value:g}")
