"""Patient-level splits: every patient in exactly one of train/val/test, stratified by class."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence

SPLITS = ("train", "val", "test")


def split_patients(
    patients: Mapping[str, tuple[int, int]], fractions: Sequence[float], seed: int = 0
) -> dict[str, str]:
    """Assign whole patients to train/val/test, each class's slices in the given shares.

    Per class, patients are taken in a seeded random order; while the class has a patient for
    each split with a share, every smaller split first gets one patient no larger than its target
    (so every split sees every class), then each patient goes to the split furthest below its
    target. A split left empty at the end takes the smallest patient of the fullest split.

    Args:
        patients: ``{patient: (class, slices)}``.
        fractions: shares of train, val and test (a 0 share gets nobody).
        seed: seed of the random order.

    Returns:
        ``{patient: split name}``.
    """
    rng = random.Random(seed)
    active = [i for i, f in enumerate(fractions) if f > 0]
    by_class: dict[int, list[str]] = defaultdict(list)
    for pid in sorted(patients):
        by_class[patients[pid][0]].append(pid)
    assigned: dict[str, int] = {}
    for label in sorted(by_class):
        queue = by_class[label]
        rng.shuffle(queue)
        total = sum(patients[p][1] for p in queue)
        target = {i: fractions[i] * total for i in active}
        filled = dict.fromkeys(active, 0)
        if len(queue) >= len(active):
            for i in sorted(active, key=lambda i: fractions[i])[:-1]:
                fits = [p for p in queue if patients[p][1] <= target[i]]
                pid = fits[0] if fits else min(queue, key=lambda p: patients[p][1])
                queue.remove(pid)
                assigned[pid] = i
                filled[i] += patients[pid][1]
        for pid in queue:
            i = max(active, key=lambda i: (target[i] - filled[i], -i))
            assigned[pid] = i
            filled[i] += patients[pid][1]
    members: dict[int, list[str]] = {i: [p for p, s in assigned.items() if s == i] for i in active}
    for i in active:
        donor = max(active, key=lambda j: len(members[j]))
        if not members[i] and len(members[donor]) > 1:
            pid = min(members[donor], key=lambda p: (patients[p][1], p))
            members[donor].remove(pid)
            members[i].append(pid)
            assigned[pid] = i
    return {pid: SPLITS[i] for pid, i in sorted(assigned.items())}
