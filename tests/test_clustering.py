"""The clustering engine on small embedding fixtures: exact sets, cannot-link, order independence."""

from __future__ import annotations

import numpy as np
import pytest

from facesets.cli.cluster import ALGORITHMS
from facesets.cluster import neighbors
from facesets.cluster.algorithms import Algorithm, ClusterParams, cluster
from facesets.cluster.evaluation import score, subject_face
from facesets.cluster.neighbors import knn_graph


def people(seed: int = 3, sizes: tuple[int, ...] = (6, 5, 4), spread: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around orthogonal centres: same person cosine about 1 - spread**2 / 2."""
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for person, size in enumerate(sizes):
        centre = np.zeros(512, np.float32)
        centre[person] = 1.0
        for _ in range(size):
            noise = rng.standard_normal(512).astype(np.float32)
            noise[: len(sizes)] = 0
            rows.append(centre + spread * noise / np.linalg.norm(noise))
            truth.append(person)
    vectors = np.asarray(rows, np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), np.asarray(truth)


def sets_of(labels: np.ndarray) -> set[frozenset[int]]:
    return {frozenset(np.flatnonzero(labels == label).tolist()) for label in np.unique(labels)}


def test_algorithm_names_match_the_cli() -> None:
    assert tuple(a.value for a in Algorithm) == ALGORITHMS


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_every_algorithm_finds_three_well_separated_people(algorithm: Algorithm) -> None:
    vectors, _truth = people()
    labels = cluster(vectors, np.arange(len(vectors)), ClusterParams(algorithm, 0.5, min_points=2))
    assert sets_of(labels) == {frozenset(range(0, 6)), frozenset(range(6, 11)), frozenset(range(11, 15))}
    assert labels.tolist() == [0] * 6 + [6] * 5 + [11] * 4  # each face labelled by its cluster's smallest index


def test_faces_of_one_photo_are_never_one_identity() -> None:
    vectors, _ = people(sizes=(4,))
    photos = np.array([0, 0, 1, 2])  # faces 0 and 1 share a photo
    labels = cluster(vectors, photos, ClusterParams(Algorithm.GRAPH, 0.5))
    assert labels[0] != labels[1]
    assert len(sets_of(labels)) == 2  # 2 and 3 join one of them
    plain = cluster(vectors, photos, ClusterParams(Algorithm.AVERAGE, 0.5))
    assert len(sets_of(plain)) == 1  # the seed algorithm ignores the constraint, as the original did


def test_relative_closeness_keeps_two_tight_look_alike_groups_apart() -> None:
    a, b = np.zeros(512, np.float32), np.zeros(512, np.float32)
    a[0], b[0], b[1] = 1.0, 0.3, np.sqrt(1 - 0.09)  # centres at cosine 0.3
    rng = np.random.default_rng(0)
    rows = []
    for centre in (a, b):
        for _ in range(5):
            noise = rng.standard_normal(512).astype(np.float32)
            noise[:2] = 0
            rows.append(centre + 0.2 * noise / np.linalg.norm(noise))
    vectors = np.asarray(rows, np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    photos = np.arange(10)
    assert len(sets_of(cluster(vectors, photos, ClusterParams(Algorithm.GRAPH, 0.8)))) == 2
    assert len(sets_of(cluster(vectors, photos, ClusterParams(Algorithm.AVERAGE, 0.8)))) == 1
    assert len(sets_of(cluster(vectors, photos, ClusterParams(Algorithm.GRAPH, 0.8, closeness=0.2)))) == 1


def test_shuffled_input_gives_the_same_sets() -> None:
    vectors, _truth = people(sizes=(7, 5, 5, 3, 1, 1), spread=0.9)
    keys = [(f"hash{i:03d}", 0) for i in range(len(vectors))]
    rng = np.random.default_rng(11)
    results = []
    for _ in range(4):
        shuffle = rng.permutation(len(vectors))
        shuffled = [keys[i] for i in shuffle]
        order = np.asarray(sorted(range(len(shuffled)), key=shuffled.__getitem__), dtype=np.int64)
        labels = cluster(vectors[shuffle][order], np.arange(len(vectors)), ClusterParams(Algorithm.GRAPH, 0.8))
        original = shuffle[order]
        results.append({frozenset(original[list(group)].tolist()) for group in sets_of(labels)})
    assert all(result == results[0] for result in results)


def test_dbscan_noise_stays_alone() -> None:
    vectors, _ = people(sizes=(5, 1))
    labels = cluster(vectors, np.arange(6), ClusterParams(Algorithm.DBSCAN, 0.5, min_points=3))
    assert sets_of(labels) == {frozenset(range(5)), frozenset({5})}


def test_knn_graph_exact_and_ivf_agree_on_clear_neighbours(monkeypatch: pytest.MonkeyPatch) -> None:
    vectors, _ = people(sizes=(40, 40, 40), spread=0.5)
    exact = knn_graph(vectors, k=5, min_sim=0.5)
    monkeypatch.setattr(neighbors, "EXACT_LIMIT", 10)
    approximate = knn_graph(vectors, k=5, min_sim=0.5)
    assert set(zip(exact.src.tolist(), exact.dst.tolist(), strict=True)) == set(
        zip(approximate.src.tolist(), approximate.dst.tolist(), strict=True)
    )
    assert np.all(exact.src < exact.dst)


def test_scores_are_the_textbook_values() -> None:
    perfect = score([0, 0, 1, 1], ["a", "a", "b", "b"])
    assert perfect.bcubed_f1 == perfect.pairwise_f1 == perfect.ari == 1.0
    split = score([0, 0, 1, 2], ["a", "a", "b", "b"])
    assert (split.bcubed_precision, split.bcubed_recall) == (1.0, 0.75)
    assert split.pairwise_f1 == pytest.approx(2 / 3)
    assert split.ari == pytest.approx(4 / 7)


def test_subject_face_is_insightfaces_max_num_rule() -> None:
    boxes = np.array([[0, 0, 50, 50], [70, 70, 130, 130], [150, 0, 200, 80]], np.float32)
    assert subject_face(boxes, 200, 200) == 1  # not the largest area (2), the one near the centre


def counted_rounds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from facesets.cluster import algorithms as clustering

    calls: list[int] = []
    real = clustering._merges

    def counting(*args: object) -> object:
        calls.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(clustering, "_merges", counting)
    return calls


def test_a_large_cluster_absorbs_its_satellites_in_few_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    core, _ = people(seed=5, sizes=(30,), spread=0.3)
    satellites, _ = people(seed=6, sizes=(40,), spread=0.9)  # each closer to the core than to each other
    vectors = np.concatenate([core, satellites])
    photos = np.arange(len(vectors))
    rounds = counted_rounds(monkeypatch)
    exact = cluster(vectors, photos, ClusterParams(Algorithm.GRAPH, 0.5, tolerance=0.0))
    exact_rounds = len(rounds)
    rounds.clear()
    tolerant = cluster(vectors, photos, ClusterParams(Algorithm.GRAPH, 0.5))
    assert sets_of(tolerant) == sets_of(exact) == {frozenset(range(70))}
    assert tolerant.tolist() == [0] * 70
    assert exact_rounds >= 30 and len(rounds) * 3 <= exact_rounds, (exact_rounds, len(rounds))


def test_two_faces_of_one_photo_never_move_into_one_cluster_in_one_round() -> None:
    core, _ = people(seed=5, sizes=(12,), spread=0.3)
    pair, _ = people(seed=7, sizes=(2,), spread=0.5)  # both about equally close to the core
    vectors = np.concatenate([core, pair])
    photos = np.r_[np.arange(12), 12, 12]
    for tolerance in (0.0, 0.02, 0.5):
        labels = cluster(vectors, photos, ClusterParams(Algorithm.GRAPH, 0.6, tolerance=tolerance))
        closer = 12 + int(np.argmax(pair @ core.mean(axis=0)))
        assert sets_of(labels) == {frozenset([*range(12), closer]), frozenset([25 - closer])}, tolerance
