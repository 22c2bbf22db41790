"""The paper's results table from evaluate.py's result files:

python -m tools.results table res_*.json                 # Markdown, one table per pair of data sets
python -m tools.results table res_*.json --format csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

from utils.errors import UserError, exit_on_user_error, starting_up

with starting_up(__name__):  # PyTorch takes seconds and much memory to load: a failure is one sentence
    from engine.result_tables import FORMATS, format_table, read_results, table_rows
    from utils.io import atomic_write_bytes


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.results",
        description="The paper's results table (Softmax, Energy, Ensemble, DDU, MSP, Mahalanobis: accuracy, ECE, "
        "AUROC, AUPRC as mean ± standard error over runs) from evaluate.py's result files.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    table = sub.add_parser("table", help="print the table of the given result files")
    table.add_argument("files", nargs="+", help="result files res_*.json written by evaluate.py")
    table.add_argument("--format", choices=FORMATS, default="markdown", help="markdown (default) or csv")
    table.add_argument(
        "--temperature-scaled",
        action="store_true",
        help="ECE and the Softmax/Energy/Ensemble/DDU scores after temperature scaling (the t_ keys)",
    )
    table.add_argument("--out", default=None, help="also write the table to this file")
    return parser


@exit_on_user_error
def main(args: argparse.Namespace) -> str:
    rows = table_rows(read_results(args.files), temperature_scaled=args.temperature_scaled)
    if not rows:
        raise UserError("none of the files holds a method of the table; pass evaluate.py's res_*.json files")
    text = format_table(rows, args.format)
    print(text, end="")
    if args.out:
        atomic_write_bytes(Path(args.out), text.encode())
    return text


if __name__ == "__main__":
    main(get_args_parser().parse_args())
