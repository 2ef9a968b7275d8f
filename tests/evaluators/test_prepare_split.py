"""``split_patients``: whole patients, class shares close to the targets, every split non-empty."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest

from evaluators.data.patients import split_patients
from evaluators.data.prepare.pipeline import file_prefix


def _shares(patients: dict[str, tuple[int, int]], split_of: dict[str, str]) -> dict[int, dict[str, float]]:
    slices: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for p, (label, n) in patients.items():
        slices[label][split_of[p]] += n
    return {label: {s: v / sum(by.values()) for s, v in by.items()} for label, by in slices.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_many_patients_land_near_the_targets(seed: int) -> None:
    rng = random.Random(100 + seed)
    # 3 classes of unequal size, 40-200 slices a patient (as whole CT series are).
    patients = {f"p{i:03d}": (i % 3 if i < 150 else 2, rng.randint(40, 200)) for i in range(200)}
    split_of = split_patients(patients, (0.7, 0.15, 0.15), seed)
    assert set(split_of) == set(patients)
    for label, shares in _shares(patients, split_of).items():
        for split, target in zip(("train", "val", "test"), (0.7, 0.15, 0.15)):
            assert abs(shares[split] - target) < 0.02, (label, split, shares)


def test_seeded() -> None:
    patients = {f"p{i}": (i % 3, 10 + i) for i in range(30)}
    first = split_patients(patients, (0.6, 0.2, 0.2), 7)
    assert split_patients(patients, (0.6, 0.2, 0.2), 7) == first
    assert split_patients(patients, (0.6, 0.2, 0.2), 8) != first


def test_three_patients_a_class_give_one_to_each_split() -> None:
    patients = {f"{c}{i}": (c, 5 + i) for c in range(3) for i in range(3)}
    split_of = split_patients(patients, (0.7, 0.15, 0.15), 0)
    for c in range(3):
        assert sorted(split_of[f"{c}{i}"] for i in range(3)) == ["test", "train", "val"]


def test_no_split_left_empty_while_patients_allow() -> None:
    # Two patients a class: no class can fill three splits, yet every split gets someone.
    patients = {"a": (0, 3), "b": (0, 2), "c": (2, 4), "d": (2, 3)}
    for seed in range(10):
        split_of = split_patients(patients, (0.7, 0.15, 0.15), seed)
        assert set(split_of.values()) == {"train", "val", "test"}, seed
    assert set(split_patients({"a": (0, 3), "b": (1, 2)}, (0.7, 0.15, 0.15), 0).values()) == {"train", "val"}


def test_a_zero_share_gets_nobody() -> None:
    patients = {f"p{i}": (i % 3, 10) for i in range(12)}
    assert set(split_patients(patients, (0.8, 0.0, 0.2), 0).values()) == {"train", "test"}


def test_file_prefix() -> None:
    assert file_prefix("NCP_341") == "NCP-341"
    assert file_prefix("case 04/b") == "case-04-b"
    assert file_prefix("P-1.a") == "P-1.a"
    assert file_prefix("__") == "patient"
