"""Thresholds learned from the library: they tighten as the library grows and keep strangers apart."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

from facesets.cluster.algorithms import Algorithm, ClusterParams, cluster, cluster_library
from facesets.cluster.calibration import (
    AVERAGES_TAIL,
    FALSE_LINKS_PER_FACE,
    MIN_LIBRARY,
    estimate,
    face_spreads,
    impostor_statistics,
    poor_faces,
    same_photo_pairs,
    shared_fraction,
)
from facesets.cluster.evaluation import score
from facesets.cluster.identify import refine
from facesets.cluster.thresholds import Thresholds
from tests.conftest import REPO, SHARED, shared_path


def library(
    people: int, per_person: int, seed: int = 5, quality: float = 0.78, among: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Faces like a recognizer's: centres in a 100-d subspace, each photo's own variation in a 28-d one, the
    share ``among`` of it among the centres (where it makes the face unlike or like other people)."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((512, 128)))[0].T.astype(np.float32)
    centres = rng.standard_normal((people, 100)).astype(np.float32) @ basis[:100]
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = np.repeat(np.arange(people), per_person)
    noise = rng.standard_normal((len(truth), 28)).astype(np.float32) @ basis[100:]
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    deviation = rng.standard_normal((len(truth), 100)).astype(np.float32) @ basis[:100]
    noise = math.sqrt(1 - among) * noise + math.sqrt(among) * deviation / np.linalg.norm(deviation, axis=1)[:, None]
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    vectors = quality * centres[truth] + math.sqrt(1 - quality**2) * noise
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32), truth


def test_the_seed_threshold_follows_the_normal_tail_for_the_library_size() -> None:
    vectors, _ = library(600, 4)
    photos = np.arange(len(vectors))
    mean, sd = impostor_statistics(vectors)
    learned = estimate(vectors, same_photo_pairs(photos))
    z = NormalDist().inv_cdf(1.0 - FALSE_LINKS_PER_FACE / (len(vectors) - 1))
    assert learned.seed_similarity == pytest.approx(mean + sd * z)
    assert (learned.impostor_mean, learned.impostor_sd, learned.source) == (mean, sd, "library")
    assert learned.expected_false_links == pytest.approx(len(vectors) * FALSE_LINKS_PER_FACE / 2)


def test_a_larger_library_needs_a_closer_match() -> None:
    small, _ = library(60, 4)
    large, _ = library(6000, 4)
    seed_small = estimate(small, same_photo_pairs(np.arange(len(small))), prior=(0.0, 0.1)).seed_similarity
    seed_large = estimate(large, same_photo_pairs(np.arange(len(large))), prior=(0.0, 0.1)).seed_similarity
    assert seed_large > seed_small + 0.08


def test_random_pairs_give_the_strangers_statistics_despite_same_person_pairs() -> None:
    vectors, truth = library(100, 10)  # a tenth of the random pairs are one person
    mean, sd = impostor_statistics(vectors)
    left, right = np.triu_indices(len(vectors), 1)
    sims = (vectors @ vectors.T)[left, right][truth[left] != truth[right]]
    assert mean == pytest.approx(float(sims.mean()), abs=0.01)
    assert sd == pytest.approx(float(sims.std()), rel=0.1)


def test_a_small_library_uses_the_recognizers_statistics_and_a_given_distance_is_kept() -> None:
    vectors, _ = library(10, 5)
    learned = estimate(vectors, same_photo_pairs(np.arange(len(vectors))), prior=(0.013, 0.1))
    assert len(vectors) < MIN_LIBRARY and learned.source == "recognizer"
    assert (learned.impostor_mean, learned.impostor_sd) == (0.013, 0.1)
    given = estimate(vectors, same_photo_pairs(np.arange(len(vectors))), distance=0.6)
    assert given.given and given.seed_similarity == pytest.approx(0.4)


@pytest.mark.parametrize("among", [0.0, 0.6])
def test_the_shared_fractions_are_measured_from_clusters_and_single_faces(among: float) -> None:
    vectors, truth = library(200, 8, among=among)
    sums = np.stack([vectors[truth == person].sum(axis=0) for person in range(200)])
    sizes = np.full(200, 8, np.int64)
    _, sd = impostor_statistics(vectors)
    fractions, measured = shared_fraction(sums, sizes, vectors, truth, sd)
    # the truth, from every pair of people and every face against every other person
    means = sums / 8
    i, j = np.triu_indices(200, 1)
    pairs = np.einsum("ij,ij->i", means[i], means[j]).var() / sd**2
    singles = (vectors @ means.T)[truth[:, None] != np.arange(200)[None, :]].var() / sd**2
    # pairs = rho + q 2/8 + (1 - rho - 2q)/64; singles = rho + q + (1 - rho - q)/8
    rho, own = np.linalg.solve(
        [[1 - 1 / 64, 2 / 8 - 2 / 64], [1 - 1 / 8, 1 + 1 / 8 - 2 / 8]], [pairs - 1 / 64, singles - 1 / 8]
    )
    assert measured == 200 and fractions is not None
    assert fractions[0] == pytest.approx(rho, abs=0.08)
    assert fractions[1] == pytest.approx(max(own, 0.0), abs=0.05)
    assert (fractions[1] > 0.1) is (among > 0)  # a face's own share shows only where it lies among the people
    assert shared_fraction(sums[:5], sizes[:5], vectors, truth, sd) == (None, 5)  # too few: nothing relaxed


def test_larger_clusters_need_less_and_never_less_than_the_floor() -> None:
    vectors, _ = library(300, 10)
    learned = estimate(vectors, same_photo_pairs(np.arange(len(vectors)))).with_shared(0.4, 0.0, 30)
    one, two, many = learned.required(np.array([1.0, 2.0, 1e9]), np.array([1.0, 2.0, 1e9]))
    assert one == pytest.approx(learned.seed_similarity)
    assert one > two > many >= learned.floor_similarity - 1e-9
    assert learned.floor_similarity >= learned.lowest_similarity()


def test_a_single_face_needs_more_against_a_large_cluster_than_two_large_clusters_do() -> None:
    vectors, _ = library(300, 10)
    learned = estimate(vectors, same_photo_pairs(np.arange(len(vectors)))).with_shared(0.4, 0.2, 30)
    single, pair, both = learned.required(np.array([1.0, 1.0, 1e9]), np.array([1.0, 1e9, 1e9]))
    assert single == pytest.approx(learned.seed_similarity)  # two single faces: the seed, whatever q
    relief = AVERAGES_TAIL * math.sqrt(0.6)  # the spread's factor, for the heavier tail of averages
    assert pair == pytest.approx(learned.impostor_mean + (single - learned.impostor_mean) * relief)
    assert both == pytest.approx(learned.floor_similarity)
    assert single > pair > both


def test_poor_faces_spread_wider_against_the_cohort() -> None:
    good, _ = library(200, 5, quality=0.85)
    poor, _ = library(200, 5, seed=6, quality=0.2)
    everyone = np.concatenate([good, poor])
    _, sd = impostor_statistics(everyone)
    spreads = face_spreads(everyone, everyone, sd)
    assert float(np.median(spreads[len(good) :])) > float(np.median(spreads[: len(good)]))


def test_same_photo_pairs_are_every_pair_within_a_photo() -> None:
    left, right = same_photo_pairs(np.array([4, 1, 4, 2, 4, 1]))
    assert sorted(zip(left.tolist(), right.tolist(), strict=True)) == [(0, 2), (0, 4), (1, 5), (2, 4)]


def test_the_learned_default_keeps_strangers_apart_where_the_old_fixed_distance_merged_them() -> None:
    vectors, truth = library(2000, 3, quality=0.6)
    photos = np.arange(len(vectors))
    learned = score(cluster(vectors, photos, ClusterParams(Algorithm.GRAPH)), truth)
    fixed = score(cluster(vectors, photos, ClusterParams(Algorithm.GRAPH, 0.80)), truth)
    assert learned.bcubed_precision >= 0.98
    assert fixed.bcubed_precision < 0.9
    assert learned.bcubed_f1 > fixed.bcubed_f1


def test_two_faces_of_one_photo_never_share_a_cluster_with_the_learned_default() -> None:
    vectors, truth = library(100, 6)
    photos = np.arange(len(vectors))
    photos[1] = photos[0]  # two faces of person 0 said to be in one photo: they must stay apart
    labels, learned = cluster_library(vectors, photos, ClusterParams(Algorithm.GRAPH))
    assert labels[0] != labels[1]
    assert learned.same_photo_pairs == 1
    person = set(np.flatnonzero(truth == 0).tolist())
    for face in (0, 1):
        assert set(np.flatnonzero(labels == labels[face]).tolist()) <= person  # no stranger joins either


def test_poor_faces_are_low_norm_outliers_and_unknown_norms_never_are() -> None:
    norms = np.r_[np.linspace(9.0, 11.0, 40), [6.0, np.nan, 8.6]].astype(np.float32)
    poor = poor_faces(norms)
    assert poor is not None
    # median 10, 1.4826 x MAD ~ 0.75: below ~8.5 is poor; NaN (a cache from before norms) is not
    assert np.flatnonzero(poor).tolist() == [40]
    assert poor_faces(norms[:10]) is None  # too few norms to judge
    assert poor_faces(np.full(40, np.nan, np.float32)) is None


def _poor_face(towards: list[np.ndarray], weight: float, seed: int) -> np.ndarray:
    """A face ``weight`` along each of the unit directions ``towards``, the rest noise."""
    noise = np.random.default_rng(seed).standard_normal(512).astype(np.float32)
    vector = weight * sum(towards) + math.sqrt(1 - len(towards) * weight**2) * noise / np.linalg.norm(noise)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def test_a_poor_face_joins_the_one_cluster_that_takes_it_and_stays_alone_between_two() -> None:
    vectors, truth = library(60, 8)
    centre = [vectors[truth == person].mean(axis=0) for person in (0, 1)]
    centre = [direction / np.linalg.norm(direction) for direction in centre]
    lone = _poor_face([centre[0]], 0.4, 1)  # like person 0, but below the seed threshold to each of its faces
    between = _poor_face(centre, 0.43, 2)  # as like person 0 as person 1
    everyone = np.vstack([vectors, lone, between])
    photos = np.arange(len(everyone))
    norms = np.r_[np.random.default_rng(3).normal(10.0, 0.5, len(vectors)), [5.0, 5.0]].astype(np.float32)
    labels, learned = cluster_library(everyone, photos, ClusterParams(Algorithm.GRAPH), poor=poor_faces(norms))
    first, second = np.flatnonzero(truth == 0)[0], np.flatnonzero(truth == 1)[0]
    assert (everyone[-2] @ everyone[: len(vectors)][truth == 0].T).max() < learned.seed_similarity
    assert labels[-2] == labels[first]
    assert labels[-1] == len(everyone) - 1  # alone
    assert (learned.poor_faces, learned.poor_attached) == (2, 1)
    # without norms both join a cluster: the face between two people lands in one of them
    plain, _ = cluster_library(everyone, photos, ClusterParams(Algorithm.GRAPH))
    assert plain[-1] in (plain[first], plain[second])


def test_a_poor_face_left_alone_is_reported_as_low_quality() -> None:
    vectors, _ = library(3, 1)
    rows = np.arange(3, dtype=np.int64)
    learned = estimate(vectors, same_photo_pairs(rows), prior=(0.0, 0.1))
    poor = np.array([True, False, False])
    kept, dropped = refine(vectors, ["a", "b", "c"], rows, rows, Thresholds(match=0.55), 5, learned, poor)
    assert kept == []
    assert dropped == [
        {"reason": "low_quality", "faces": 1, "keys": []},
        {"reason": "singleton", "faces": 2, "keys": []},
    ]


def test_the_defaults_keep_strangers_apart_on_the_labeled_photos_through_the_cli_path(tmp_path: Path) -> None:
    """scripts/eval_clusters.py on ../shared/data/faces: every photo embedded with the real pack, then ``facesets
    cluster`` with its defaults (the path users take) and the engine alone; precision first, and the learned
    default ahead of each seed algorithm at its own default."""
    shared_path("data", "faces", "labels.json")
    command = [sys.executable, str(REPO / "scripts" / "eval_clusters.py"), "--shared", str(SHARED)]
    command += ["--set", "faces", "--pack", "scrfd500m-mbf", "--work", str(tmp_path), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)["faces/scrfd500m-mbf"]
    cli, engine = result["cli"], result["engine"]
    assert (result["photos"], cli["people"]) == (177, 18)
    assert cli["bcubed_precision"] >= 0.98 and engine["graph"]["bcubed_precision"] >= 0.98
    assert cli["bcubed_f1"] >= 0.9  # 0.911 when written; the cap with min_faces 5 is 0.968
    assert cli["estimate"]["source"] == "recognizer" and cli["estimate"]["seed_clusters"] >= 12
    for seed in ("average", "components", "dbscan"):
        assert engine["graph"]["bcubed_f1"] > engine[seed]["bcubed_f1"], seed
