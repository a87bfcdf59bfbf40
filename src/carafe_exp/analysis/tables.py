"""``carafe-tables``: a sweep's runs as the paper's table, ours beside the paper's numbers.

    carafe-tables --list                                             # the 24 tables, what each needs
    carafe-tables outputs/multirun/<date>/<time>                     # the table the sweep's experiment names
    carafe-tables outputs/multirun/<date>/<time> --paper carafe/table2 --format markdown --plot t2.png
    carafe-tables run_a/ run_b/ --metrics bbox/AP bbox/APs --wandb

With a paper table (``--paper``, or the ``experiment=`` every run was started with), the rows
are the paper's, in its order, each with our value, the paper's and the difference; a failed or
missing run is a marked hole, and a run whose setting is not the table's is listed as not
belonging. Without one, each run is a row labelled by the overrides that differ between runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from carafe_exp.analysis.paper_numbers import paper_table, paper_tables
from carafe_exp.analysis.run_records import RunRecord, load_run_records
from carafe_exp.analysis.table_formats import FORMATS, render, runs_columns
from carafe_exp.analysis.table_results import TableResult, assemble_table
from carafe_exp.analysis.table_setting import list_lines
from carafe_exp.errors import ConfigError, UserInputError
from carafe_exp.runs.record import METRICS_FILE


def detect_table(records: Sequence[RunRecord]) -> str | None:
    """The paper table every run was started for (its ``experiment=`` override), if they agree on one."""
    names = {run.override_value("experiment") for run in records}
    if len(names) == 1:
        name = names.pop()
        if name in paper_tables():
            return name
    return None


def list_tables(width: int | None = None) -> str:
    """The index of every table: id, paper and number, task, rows, then what it shows and needs.

    One block per table, its description wrapped under it, so the list reads at any width
    (80 columns when piped) instead of squeezing the description into a narrow column.
    """
    import shutil
    import textwrap

    width = width or shutil.get_terminal_size((100, 24)).columns
    settings = list_lines(list(paper_tables()))
    lines = ["The papers' tables. Run one: carafe-exp -m experiment=<id> ...",
             "Show it: carafe-tables <sweep dir> --paper <id>", ""]
    for table_id, entry in paper_tables().items():
        quoted = len(entry.rows) - len(entry.run_rows)
        rows = f"{len(entry.run_rows)} rows" + (f" (+{quoted} quoted)" if quoted else "")
        lines.append(f"{table_id:<18} {entry.name} · {entry.task} · {rows}")
        same = f" Same runs as {entry.same_as}." if entry.same_as else ""
        lines += textwrap.wrap(f"{entry.title}. Needs: {entry.needs}.{same}", width=max(width - 4, 40),
                               initial_indent="    ", subsequent_indent="    ", break_on_hyphens=False)
        if table_id in settings:
            lines += textwrap.wrap(settings[table_id] + ".", width=max(width - 4, 40), initial_indent="    ",
                                   subsequent_indent="    ", break_on_hyphens=False)
    lines += ["", "rows: the sweep's runs; quoted rows: numbers from other work, for reference",
              "paper's machine: what the paper trained on; a run on another machine warns",
              "  and records how it differs (metrics.json setting_differences)"]
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="carafe-tables", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("paths", nargs="*", help=f"sweep or run directories, or {METRICS_FILE} files")
    parser.add_argument("--paper", metavar="TABLE", help="the paper table (carafe/table1 .. carafe_pp/table14; "
                        "default: the experiment the runs were started with)")
    parser.add_argument("--metrics", nargs="+", metavar="NAME", help="only these columns (e.g. bbox/AP fps)")
    parser.add_argument("--format", choices=FORMATS, default="text", help="output format (default: text)")
    parser.add_argument("--json", action="store_true", help="same as --format json")
    parser.add_argument("--plot", metavar="OUT.png", help="also draw ours vs the paper's, one panel per metric")
    parser.add_argument("--wandb", action="store_true",
                        help="also log the table (and the plot) to W&B, in the sweep's group (offline without login)")
    parser.add_argument("--list", action="store_true", help="list the 24 tables and what each needs")
    return parser


def _error(message: str) -> int:
    sys.stderr.write(f"carafe-tables: error: {message}\n")
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point (``carafe-tables``)."""
    args = _parser().parse_args(argv)
    if args.list:
        sys.stdout.write(list_tables())
        return 0
    if not args.paths:
        return _error("give a sweep or run directory (or --list)")
    fmt = "json" if args.json else args.format
    try:
        records, problems = load_run_records(args.paths)
        if not records:
            detail = f" ({len(problems)} unreadable: {problems[0]})" if problems else ""
            return _error(f"no readable {METRICS_FILE} under {' '.join(args.paths)}{detail}")
        table_id = args.paper or detect_table(records)
        result: TableResult | None = None
        if table_id is not None:
            result = assemble_table(paper_table(table_id), records, args.metrics, problems)
            columns = result.columns
        else:
            columns = runs_columns(records, args.metrics)
            known = {name for run in records for name in run.metrics}
            unknown = [c for c in args.metrics or [] if c not in known]
            if unknown:
                return _error(f"--metrics {' '.join(unknown)}: no run has it; the runs have "
                              f"{' '.join(sorted(known)) or 'no metrics'}")
        sys.stdout.write(render(fmt, result, records, columns, problems))
        plot_path = None
        if args.plot:
            from carafe_exp.analysis.table_plot import plot_runs, plot_table
            from carafe_exp.analysis.table_formats import runs_grid

            if result is not None:
                plot_path = plot_table(result, args.plot)
            else:
                labels = [line[0] for line in runs_grid(records, columns).lines]
                plot_path = plot_runs(records, labels, columns, args.plot)
            sys.stderr.write(f"plot written to {plot_path}\n")
        if args.wandb:
            if result is None:
                return _error("--wandb logs a paper table: give --paper <table>")
            from carafe_exp.analysis.table_wandb import log_table_to_wandb

            common = Path(*Path(records[0].run_dir).parts[:-1]) if len(records) else Path.cwd()
            where = log_table_to_wandb(result, records, plot_path, common)
            sys.stderr.write(f"W&B: table logged ({where})\n")
    except FileNotFoundError as error:
        return _error(str(error))
    except (ConfigError, UserInputError) as error:
        return _error(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
