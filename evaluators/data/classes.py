"""COVIDx CT's classes: the one list of names, in label order (0 = Normal, 1 = Pneumonia, 2 = COVID-19)."""

from __future__ import annotations

CLASS_NAMES = ("Normal", "Pneumonia", "COVID-19")
NUM_CLASSES = len(CLASS_NAMES)
COVID = 2  # index of COVID-19
# Lower-case keys of the classes, as ``labels.csv`` of ``search data prepare`` and its summary spell them.
CLASS_KEYS = tuple(name.lower() for name in CLASS_NAMES)
# A data folder may name its classes for display (tables, plots, predictions): ``classes.txt``, one
# name per line in label order (e.g. "non-COVID" where class 0 holds patients who are not normal).
# The labels themselves stay COVIDx CT's 0, 1, 2.
CLASSES_FILE = "classes.txt"
