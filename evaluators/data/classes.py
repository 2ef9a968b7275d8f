"""COVIDx CT's classes: the one list of names, in label order (0 = Normal, 1 = Pneumonia, 2 = COVID-19)."""

from __future__ import annotations

CLASS_NAMES = ("Normal", "Pneumonia", "COVID-19")
NUM_CLASSES = len(CLASS_NAMES)
COVID = 2  # index of COVID-19
# Lower-case keys of the classes, as ``labels.csv`` of ``search data prepare`` and its summary spell them.
CLASS_KEYS = tuple(name.lower() for name in CLASS_NAMES)
