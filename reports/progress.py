"""How a search got where it is: hypervolume and best NetScore over trials and over wall time."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from reports.collect import Collection
from reports.pareto import REFERENCE, Normaliser, hypervolume_history

FINISHED = ("COMPLETE", "PRUNED", "FAIL")


def normaliser_for(collection: Collection) -> Normaliser:
    """Normalise by the CT L prototype's complexity, else by the largest candidate's."""
    f = collection.search
    ct_l = f[f["is_ct_l"] & f["params"].notna() & f["macs"].notna()]
    if len(ct_l):
        row = ct_l.iloc[0]
        return Normaliser(float(row["params"]), float(row["macs"]), "CT L prototype's params and MACs")
    cands = collection.candidates
    if not len(cands):
        return Normaliser(1.0, 1.0, "no candidate")
    return Normaliser(
        float(cands["params"].max()), float(cands["macs"].max()), "largest candidate's params and MACs"
    )


@dataclass(frozen=True)
class Progress:
    """Per finished trial of the search study, in trial-number order (``by_number``) and in
    completion-time order (``by_time``): hypervolume and best NetScore so far.

    Columns of both frames: ``number``, ``elapsed_s`` (since the first trial started),
    ``hypervolume``, ``best_netscore`` (NaN until a candidate completes).
    """

    by_number: pd.DataFrame
    by_time: pd.DataFrame
    normaliser: Normaliser

    @property
    def final_hypervolume(self) -> float:
        return float(self.by_number["hypervolume"].iloc[-1]) if len(self.by_number) else 0.0

    def caption(self) -> str:
        return f"Hypervolume of (accuracy, params, MACs): {self.normaliser.describe()}."


def progress(collection: Collection, normaliser: Normaliser | None = None) -> Progress:
    normaliser = normaliser or normaliser_for(collection)
    search = collection.search
    finished = search[search["state"].isin(FINISHED)]
    by_number = _curve(finished.sort_values("number"), normaliser)
    timed = finished[finished["elapsed_s"].notna()].sort_values(["elapsed_s", "number"])
    by_time = _curve(timed, normaliser)
    return Progress(by_number, by_time, normaliser)


def _curve(rows: pd.DataFrame, normaliser: Normaliser) -> pd.DataFrame:
    points = []
    best = []
    best_so_far = np.nan
    for _, r in rows.iterrows():
        if r["candidate"]:
            points.append((float(r["val_accuracy"]), float(r["params"]), float(r["macs"])))
            ns = r["netscore"]
            if ns is not None and np.isfinite(ns):
                best_so_far = ns if np.isnan(best_so_far) else max(best_so_far, float(ns))
        best.append(best_so_far)
    # The history is computed over the candidates only, then spread over every finished trial.
    hv_points = hypervolume_history(points, normaliser)
    hv = []
    k = 0
    for _, r in rows.iterrows():
        if r["candidate"]:
            k += 1
        hv.append(hv_points[k - 1] if k else 0.0)
    return pd.DataFrame(
        {
            "number": rows["number"].to_numpy(dtype=int),
            "elapsed_s": rows["elapsed_s"].to_numpy(dtype=float),
            "hypervolume": np.asarray(hv, dtype=float),
            "best_netscore": np.asarray(best, dtype=float),
        }
    )


__all__ = ["REFERENCE", "Progress", "normaliser_for", "progress"]
