"""The one table renderer of the report commands: cells (mean ± standard error, marks) and markdown, LaTeX, CSV.

``tables`` renders titled :class:`Table` objects (pandas: markdown, LaTeX, CSV); ``evaluate --format table`` prints
one plain pipe table (:func:`pipe_table`). Both format their numbers with :func:`format_cell` and mark their cells with
the same marks, so one number reads the same in every output.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from domainbed_align import floors

# a cell that counts an unfinished run, one with a damaged results line, one whose run diverged, one whose run's final
# mask is degenerate (empty or all ones: runs.records.degenerate_mask)
UNFINISHED_MARK, DAMAGED_MARK, DIVERGED_MARK, DEGENERATE_MASK_MARK = "†", "‡", "§", "¶"
MARKS = (UNFINISHED_MARK, DAMAGED_MARK, DIVERGED_MARK, DEGENERATE_MASK_MARK)  # the order a cell shows them in
LATEX_MARKS = {UNFINISHED_MARK: "$^\\dagger$", DAMAGED_MARK: "$^\\ddagger$", DIVERGED_MARK: "$^\\S$",
               DEGENERATE_MASK_MARK: "$^\\P$"}


# --- statistics of a cell ------------------------------------------------------------------------------------------
def domainbed_mean_and_error(values: Sequence[float]) -> tuple[float, float]:
    """collect_results' ``format_mean``: percent mean and ``np.std(values / sqrt(n))`` (ddof 0)."""
    values = list(values)
    return 100 * np.mean(values), 100 * np.std(np.asarray(values) / np.sqrt(len(values)))


def mean_and_error(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (std with ddof 1 / sqrt(n); 0 for one value)."""
    series = pd.Series(list(values), dtype=float)
    return float(series.mean()), float(series.sem()) if len(series) > 1 else 0.0


def percent_mean_and_error(fractions: Sequence[float]) -> tuple[float, float]:
    """Percent mean, computed as collect_results computes it (``100 * np.mean``: the mean of the percentages can
    differ in the last bit, and a mean such as 62.75 then rounds the other way), and the ddof-1 standard error."""
    values = list(fractions)
    return 100 * float(np.mean(values)), 100 * mean_and_error(values)[1]


# --- cells ---------------------------------------------------------------------------------------------------------
def format_cell(cell: Any, style: str) -> str:
    """A number cell (dict: ``mean``, ``se`` (None: the mean alone), ``digits`` (1), ``note``, ``marks``) as text in
    ``style`` ("markdown" or "latex"), or the reason a cell has no number (str) as it is."""
    if not isinstance(cell, dict):
        return cell or ""
    digits = cell.get("digits", 1)
    marks = cell.get("marks", "")
    if style == "latex":
        marks = "".join(LATEX_MARKS.get(mark, mark) for mark in marks)
    marks = f" {marks}" if marks else ""
    if cell.get("se") is None:
        return f"{cell['mean']:.{digits}f}{marks}"
    pm = "$\\pm$" if style == "latex" else "±"
    text = f"{cell['mean']:.{digits}f} {pm} {cell['se']:.{digits}f}"
    return text + (f" ({cell['note']})" if cell.get("note") else "") + marks


def _numbers(cell: Any) -> dict:
    if isinstance(cell, dict):
        return {"mean": cell["mean"], "se": cell.get("se"), "n": cell.get("n"), "note": cell.get("note", ""),
                "marks": cell.get("marks", "")}
    return {"mean": None, "se": None, "n": 0, "note": cell or "", "marks": ""}


# --- tables --------------------------------------------------------------------------------------------------------
class Table:
    """A titled table: ``frame`` (label columns, then formatted cells) for markdown/LaTeX, ``tidy`` (one row per
    cell: mean, standard error, n, why a cell is empty) for CSV."""

    def __init__(self, title: str, rows: list[dict], label_columns: list[str], value_columns: list[str],
                 notes: Sequence[str] = ()) -> None:
        self.title, self.label_columns, self.value_columns = title, label_columns, value_columns
        self.rows, self.notes = rows, list(notes)

    def frame(self, style: str) -> pd.DataFrame:
        table = pd.DataFrame([{**{c: row[c] for c in self.label_columns},
                               **{c: format_cell(row["cells"].get(c), style) for c in self.value_columns}}
                              for row in self.rows], columns=self.label_columns + self.value_columns)
        return table

    def tidy(self) -> pd.DataFrame:
        return pd.DataFrame([{"table": self.title, **{c: row[c] for c in self.label_columns}, "column": column,
                              **_numbers(row["cells"].get(column))}
                             for row in self.rows for column in self.value_columns])


def render(tables: Sequence[Table], style: str) -> str:
    """``tables`` as one text: "markdown" (a ``###`` title, the table, its notes), "latex" (a tabular with the title
    and notes as caption) or "csv" (every cell of every table, one row each)."""
    if style == "csv":
        return pd.concat([table.tidy() for table in tables], ignore_index=True).to_csv(index=False)
    parts = []
    for table in tables:
        frame = table.frame(style)
        if style == "latex":
            floors.require_extra("report", "LaTeX tables (--format latex: pandas' to_latex needs jinja2)")
            frame = frame.map(_latex_escape_labels) if hasattr(frame, "map") else frame.applymap(_latex_escape_labels)
            caption = _latex_escape(table.title + ". " + " ".join(table.notes))
            parts.append(frame.to_latex(index=False, escape=False, caption=caption))
        else:
            notes = "".join(f"\n\n{note}" for note in table.notes)
            parts.append(f"### {table.title}\n\n{frame.to_markdown(index=False)}{notes}\n")
    return "\n".join(parts)


def pipe_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a plain markdown pipe table (no padding: ``evaluate``'s records tables, pasted as they come)."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def _latex_escape(text: str) -> str:
    for plain, escaped in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("_", "\\_"), ("#", "\\#"),
                           ("`", ""), ("±", "$\\pm$"), *LATEX_MARKS.items()):
        text = text.replace(plain, escaped)
    return text


def _latex_escape_labels(value: Any) -> Any:
    return value if not isinstance(value, str) or "$" in value else _latex_escape(value)  # "$": a number cell
