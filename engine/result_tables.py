"""Aggregating per-run metrics into the original DDU result JSON (`mean`, `std` as standard error, `values`),
and the paper's results table from such files (its command: `python -m tools.results table res_*.json`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats

from engine.run_paths import run_name
from utils.errors import UserError

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
    """Unbiased standard deviation / sqrt(n), as the original (`tensor.std() / sqrt(n)`): `scipy.stats.sem`
    (equal to the original's float64 formula within 1e-15 relative).

    None (JSON null) for fewer than two values: the unbiased deviation of one value is undefined. The
    original writes NaN there, which `json.dump` emits as the bare token `NaN`, not valid JSON; null keeps
    the key, says "undefined" and parses everywhere.
    """
    if len(values) < 2:
        return None
    return float(scipy.stats.sem(values, ddof=1))


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


# --------------------------------------------------------------------------------------------------------
# The paper's table from result files (`python -m tools.results table res_*.json`)


@dataclass(frozen=True)
class Method:
    """One row kind of the paper's table (Mukhoti et al. 2021, Table 1): the result files of `model_types`
    give it accuracy and ECE, and its AUROC/AUPRC are the keys `{prefix}_auroc`, `{prefix}_auprc`."""

    name: str
    model_types: tuple[str, ...]
    prefix: str
    score: str


# Which JSON keys make which method, as engine/evaluation.py writes them (the original evaluate.py's m1/m2):
# softmax files: m1 = log-sum-exp of the logits (the negative energy, Liu et al. 2020), m2 = softmax entropy;
# ensemble files: m1 = mutual information, m2 = predictive entropy (the paper's table uses the latter);
# gmm files: m1 = DDU's feature log-density, m2 = entropy of the softmax over class log-densities;
# every single-model file: msp = maximum softmax probability, mahalanobis = Lee et al. (2018).
METHODS = (
    Method("Softmax", ("softmax",), "m2", "softmax entropy"),
    Method("Energy", ("softmax",), "m1", "log-sum-exp of the logits"),
    Method("Ensemble", ("ensemble",), "m2", "predictive entropy"),
    Method("Ensemble (MI)", ("ensemble",), "m1", "mutual information"),
    Method("DDU", ("gmm",), "m1", "feature density (GDA)"),
    Method("MSP", ("softmax", "gmm"), "msp", "maximum softmax probability"),
    Method("Mahalanobis", ("softmax", "gmm"), "mahalanobis", "Mahalanobis distance, shared covariance"),
)
TABLE_COLUMNS = ("accuracy", "ece", "auroc", "auprc")
FORMATS = ("markdown", "csv")


@dataclass
class Row:
    """One method on one network and one pair of data sets: per-run values (None: the run failed) of
    each of `TABLE_COLUMNS`, pooled over the result files that evaluated it."""

    method: Method
    network: str
    dataset: str
    ood_dataset: str
    values: dict[str, list[float | None]]
    sources: list[str]
    partial: bool = False  # pooled from an unfinished evaluation's `.partial` side file

    @property
    def runs(self) -> int:
        return len(self.values["accuracy"])

    @property
    def failed(self) -> int:
        """Runs without an AUROC for this method: the run failed (GMM fit) or the score was not computed."""
        return sum(value is None for value in self.values["auroc"])

    def mean_and_error(self, column: str) -> tuple[float, float | None] | None:
        present = [v for v in self.values[column] if v is not None]
        if not present:
            return None
        return sum(present) / len(present), standard_error(present)


def _network_name(info: dict[str, Any]) -> str:
    name = run_name(info.get("model", "?"), None, info.get("sn"), info.get("mod"), info.get("coeff", 3.0))
    if info.get("model_type") == "ensemble":
        name += f" x{info.get('ensemble')}"
    return name


def table_rows(
    results: Sequence[tuple[str, dict[str, Any]]], *, temperature_scaled: bool = False
) -> list[Row]:
    """The table's rows from `(source, result JSON)` pairs, in `METHODS` order, then network and data sets.

    Files of one method, network and data-set pair are pooled (their runs are concatenated). MSP and
    Mahalanobis are taken from softmax files, and from gmm files only for networks no softmax file covers:
    both files evaluate the same checkpoints, so taking both would count each run twice.
    `temperature_scaled` reads ECE and the m1/m2 scores after temperature scaling (`t_` keys; accuracy and
    the MSP/Mahalanobis baselines have no such keys and stay as they are).
    """
    with_softmax = {
        (_network_name(r["info"]), r["info"].get("dataset"), r["info"].get("ood_dataset"))
        for _, r in results
        if r["info"].get("model_type") == "softmax"
    }
    rows: dict[tuple, Row] = {}
    for source, result in results:
        info = result["info"]
        model_type = info.get("model_type")
        network, dataset, ood = _network_name(info), info.get("dataset"), info.get("ood_dataset")
        for method in METHODS:
            if model_type not in method.model_types:
                continue
            if (
                model_type == "gmm"
                and "softmax" in method.model_types
                and (network, dataset, ood) in with_softmax
            ):
                continue
            values = result["values"]
            runs = len(values.get("accuracy") or [])
            prefix = (
                f"t_{method.prefix}"
                if temperature_scaled and method.prefix in ("m1", "m2")
                else method.prefix
            )
            if runs == 0 or f"{prefix}_auroc" not in values:
                continue
            columns = {
                "accuracy": values["accuracy"],
                "ece": values.get("t_ece" if temperature_scaled else "ece", [None] * runs),
                "auroc": values[f"{prefix}_auroc"],
                "auprc": values.get(f"{prefix}_auprc", [None] * runs),
            }
            key = (METHODS.index(method), network, dataset, ood)
            if key not in rows:
                rows[key] = Row(method, network, dataset, ood, {c: [] for c in TABLE_COLUMNS}, [])
            row = rows[key]
            for column in TABLE_COLUMNS:
                row.values[column] += list(columns[column])
            row.sources.append(source)
            row.partial = row.partial or is_partial(source)
    return [rows[key] for key in sorted(rows, key=lambda k: (k[2] or "", k[3] or "", k[0], k[1]))]


def _cell(row: Row, column: str, separator: str = " ± ") -> str:
    """`mean ± standard error` in percent, as the paper prints its table; '-' when no run has the value, and
    the mean alone for a single run, whose standard error is undefined."""
    stats = row.mean_and_error(column)
    if stats is None:
        return "-"
    mean, error = stats
    if error is None:
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f}{separator}{100 * error:.2f}"


def _runs_cell(row: Row) -> str:
    cell = str(row.runs) if not row.failed else f"{row.runs - row.failed} of {row.runs} ({row.failed} failed)"
    return f"{cell}, partial" if row.partial else cell


def format_table(rows: Sequence[Row], fmt: str = "markdown") -> str:
    """The rows as a Markdown table (one per pair of data sets, accuracy/ECE/AUROC/AUPRC in percent as
    mean ± standard error over runs) or as CSV (one line per row, means and errors in separate columns)."""
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        header = ["dataset", "ood_dataset", "method", "score", "network", "runs", "failed"]
        for column in TABLE_COLUMNS:
            header += [column, f"{column}_stderr"]
        writer.writerow(header)
        for row in rows:
            line = [
                row.dataset,
                row.ood_dataset,
                row.method.name,
                row.method.score,
                row.network,
                row.runs,
                row.failed,
            ]
            for column in TABLE_COLUMNS:
                stats = row.mean_and_error(column)
                if stats is None:
                    line += ["", ""]
                else:
                    line += [f"{stats[0]:.6g}", "" if stats[1] is None else f"{stats[1]:.6g}"]
            writer.writerow(line)
        return out.getvalue()
    if fmt != "markdown":
        raise ValueError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    blocks = []
    pairs = list(dict.fromkeys((row.dataset, row.ood_dataset) for row in rows))
    headers = ("method", "score", "network", "accuracy", "ECE", "AUROC", "AUPRC", "runs")
    for dataset, ood in pairs:
        cells = [
            [
                row.method.name,
                row.method.score,
                row.network,
                *(_cell(row, c) for c in TABLE_COLUMNS),
                _runs_cell(row),
            ]
            for row in rows
            if (row.dataset, row.ood_dataset) == (dataset, ood)
        ]
        title = f"**{dataset} vs {ood}** (percent, mean ± standard error over runs)"
        blocks.append(f"{title}\n\n{markdown_table(headers, cells)}")
    return "\n\n".join(blocks) + "\n"


def ood_table(
    results: Sequence[tuple[str, dict[str, Any]]], groups: Mapping[str, Sequence[str]] | None = None
) -> str:
    """One evaluation against several OoD sets as one Markdown table: a row per method and network, a column
    per OoD set (AUROC in percent, mean ± standard error over runs; AUPRC and FPR95 are in the files), in the
    order of `results`, and one per group of `groups` (`{group: [OoD names]}`): the mean of its sets' mean
    AUROCs, as OpenOOD reports near- and far-OoD."""
    rows = table_rows(results)
    oods = list(dict.fromkeys(r["info"].get("ood_dataset") for _, r in results))
    by_method: dict[tuple[int, str], dict[str, Row]] = {}
    for row in rows:
        by_method.setdefault((METHODS.index(row.method), row.network), {})[row.ood_dataset] = row
    groups = dict(groups or {})
    headers = ("method", "score", "network", "accuracy", "ECE", *oods, *groups, "runs")
    cells = []
    for key in sorted(by_method):
        per_ood = by_method[key]
        first = next(iter(per_ood.values()))
        group_cells = []
        for members in groups.values():
            means = [per_ood[m].mean_and_error("auroc") if m in per_ood else None for m in members]
            present = [mean for mean, _ in filter(None, means)]
            complete = len(present) == len(means)
            group_cells.append(f"{100 * sum(present) / len(present):.2f}" if complete else "-")
        cells.append(
            [
                first.method.name,
                first.method.score,
                first.network,
                _cell(first, "accuracy"),
                _cell(first, "ece"),
                *(_cell(per_ood[ood], "auroc") if ood in per_ood else "-" for ood in oods),
                *group_cells,
                _runs_cell(max(per_ood.values(), key=lambda row: row.failed)),  # the most failed runs
            ]
        )
    dataset = rows[0].dataset if rows else "?"
    title = f"**{dataset}: AUROC against each OoD set** (percent, mean ± standard error over runs"
    title += "; a group is the mean of its sets' AUROCs)" if groups else ")"
    return f"{title}\n\n{markdown_table(headers, cells)}\n"


def format_value(value: Any, digits: int = 4) -> str:
    """A table cell: floats to `digits` decimals, None as '-', anything else as its str."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table of `rows` under `headers`, cells through `format_value` (floats to 4 decimals)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(format_value(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def curve_standard_errors(values: np.ndarray) -> np.ndarray:
    """`standard_error` of each column of `values` `(runs, steps)` (a curve's band), 0 for a single run."""
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    return np.array([standard_error(column.tolist()) or 0.0 for column in values.T])


# Per-run values that are fractions in [0, 1] (the table prints them in percent): accuracy, ECE, AUROC,
# AUPRC and FPR at 95% TPR, under any prefix (`t_`, `m1_`, `msp_`, ...).
FRACTION_SUFFIXES = ("accuracy", "ece", "auroc", "auprc", "fpr95")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_result(source: str | Path, result: dict[str, Any]) -> None:
    """A `UserError` naming the file and key where a result file (perhaps edited by hand) does not hold what
    evaluate.py writes: `values` maps each metric to a list with one number (or null, a failed run) per run,
    every list as long as the runs the file records (`info.runs`; `runs_done` for a `.partial` side file),
    fractions (accuracy, ECE, AUROC, AUPRC, FPR95) within [0, 1], and `info` the settings as a mapping."""
    fix = "restore it from evaluate.py's output or rerun evaluate.py"
    info, values = result.get("info"), result.get("values")
    if not isinstance(info, dict):
        raise UserError(f"'{source}': 'info' is a {type(info).__name__}, not the mapping of settings; {fix}")
    if not isinstance(values, dict):
        raise UserError(f"'{source}': 'values' is a {type(values).__name__}, not a mapping of metrics; {fix}")
    for key in ("model_type", "model", "dataset", "ood_dataset"):
        if key in info and not isinstance(info[key], str):
            raise UserError(f"'{source}': info.{key} is {info[key]!r}, not a name; {fix}")
    # A `.partial` side file holds the runs done so far (`runs_done`) of the `info.runs` asked for.
    partial = is_partial(str(source))
    where, runs = ("runs_done", result.get("runs_done")) if partial else ("info.runs", info.get("runs"))
    if runs is not None and not (_is_number(runs) and float(runs).is_integer() and runs >= 1):
        raise UserError(f"'{source}': {where} is {runs!r}, not a number of runs; {fix}")
    for key, per_run in values.items():
        if not isinstance(per_run, list):
            raise UserError(
                f"'{source}': values.{key} is a {type(per_run).__name__} ({per_run!r:.40}), not a list with "
                f"one value per run; {fix}"
            )
        if runs is not None and len(per_run) != runs:
            raise UserError(
                f"'{source}': values.{key} holds {len(per_run)} values, but the file records {int(runs)} "
                f"run{'s' if runs != 1 else ''} ({where}); {fix}"
            )
        fraction = key.endswith(FRACTION_SUFFIXES)
        for i, value in enumerate(per_run):
            if value is None:
                continue
            if not _is_number(value) or not math.isfinite(value):
                raise UserError(f"'{source}': values.{key}[{i}] is {value!r}, not a finite number; {fix}")
            if fraction and not 0 <= value <= 1:
                raise UserError(
                    f"'{source}': values.{key}[{i}] is {value!r}, outside [0, 1] (the files hold fractions, "
                    f"the table prints percent); {fix}"
                )
    lengths = {len(per_run) for per_run in values.values()}
    if len(lengths) > 1:
        raise UserError(
            f"'{source}': the lists in 'values' have different lengths "
            f"({', '.join(map(str, sorted(lengths)))}), but each holds one value per run; {fix}"
        )


def read_results(paths: Sequence[str | Path]) -> list[tuple[str, dict[str, Any]]]:
    """`(path, JSON)` of each result file; a missing or foreign file is a `UserError` naming it."""
    results = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"the result file '{path}' does not exist; pass files written by evaluate.py")
        try:
            result = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(
                f"'{path}' is not a JSON file ({type(err).__name__}); pass evaluate.py's res_*.json"
            ) from None
        if not isinstance(result, dict) or not {"values", "info"} <= set(result):
            raise UserError(
                f"'{path}' is not a result file of evaluate.py (no 'values' and 'info'); pass res_*.json"
            )
        check_result(path, result)
        results.append((str(path), result))
    return _without_duplicates(results)


def is_partial(source: str) -> bool:
    """A `.partial` side file: the runs an unfinished evaluate.py command had done."""
    return str(source).endswith(".partial")


def _seeds(info: dict[str, Any]) -> set[int]:
    """The seeds of the networks a result evaluated (`engine.run_paths.run_seeds` over its runs)."""
    seed, runs = info.get("seed"), info.get("runs")
    if not isinstance(seed, int) or not isinstance(runs, int):
        return set()
    per_run = info.get("ensemble") if info.get("model_type") == "ensemble" else 1
    per_run = per_run if isinstance(per_run, int) else 1
    return set(range(seed, seed + runs * per_run))


def _without_duplicates(results: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """`results` with each file counted once: the same file (or the same content) passed twice is dropped
    with a warning; two results of one method, network and data sets that share a seed are refused, since
    pooling them would count those runs twice."""
    kept: list[tuple[str, dict[str, Any]]] = []
    seen: dict[Any, str] = {}
    for source, result in results:
        key = (Path(source).resolve(), json.dumps(result, sort_keys=True))
        same = next((s for k, s in seen.items() if k[0] == key[0] or k[1] == key[1]), None)
        if same is not None:
            warnings.warn(f"'{source}' is the same result as '{same}'; it is counted once", stacklevel=2)
            continue
        info = result["info"]
        group = (info.get("model_type"), _network_name(info), info.get("dataset"), info.get("ood_dataset"))
        for other, other_result in kept:
            other_info = other_result["info"]
            other_group = (other_info.get("model_type"), _network_name(other_info), other_info.get("dataset"),
                           other_info.get("ood_dataset"))  # fmt: skip
            shared = _seeds(info) & _seeds(other_info)
            if group == other_group and shared:
                raise UserError(
                    f"'{source}' and '{other}' both evaluated the seed {min(shared)} run of {group[1]} "
                    f"({group[0]}, {group[2]} vs {group[3]}), which the table would count twice; pass one of them"
                )
        seen[key] = source
        kept.append((source, result))
    return kept
