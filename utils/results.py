"""Aggregating per-run metrics into the original DDU result JSON: `mean`, `std` (standard error), `values`."""

from __future__ import annotations

import math
from typing import Any

# The keys of the original evaluate.py output, in its order.
ORIGINAL_KEYS = (
    "accuracy",
    "ece",
    "m1_auroc",
    "m1_auprc",
    "m2_auroc",
    "m2_auprc",
    "t_ece",
    "t_m1_auroc",
    "t_m1_auprc",
    "t_m2_auroc",
    "t_m2_auprc",
)


def standard_error(values: list[float]) -> float | None:
    """Unbiased standard deviation / sqrt(n), as the original (`tensor.std() / sqrt(n)`).

    None (JSON null) for fewer than two values: the unbiased deviation of one value is undefined. The
    original writes NaN there, which `json.dump` emits as the bare token `NaN`, not valid JSON; null keeps
    the key, says "undefined" and parses everywhere.
    """
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return math.sqrt(variance) / math.sqrt(n)


def aggregate(per_run: list[dict[str, float] | None], info: dict[str, Any]) -> dict[str, Any]:
    """`per_run[i]` holds run i's metrics, or None for a failed run (kept as null in `values`).

    Means and standard errors are over the runs that produced the metric; failed runs are listed separately
    by the caller, never silently dropped. A metric with fewer than two values has `std` null.
    """
    keys = list(ORIGINAL_KEYS)
    for run in per_run:
        for key in run or {}:
            if key not in keys:
                keys.append(key)
    result: dict[str, Any] = {"mean": {}, "std": {}, "values": {}}
    for key in keys:
        values = [None if run is None else run.get(key) for run in per_run]
        present = [v for v in values if v is not None]
        result["values"][key] = values
        result["mean"][key] = sum(present) / len(present) if present else None
        result["std"][key] = standard_error(present)
    result["info"] = info
    return result
