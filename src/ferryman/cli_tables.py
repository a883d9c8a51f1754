"""One way to print a table on the command line, for every ``ferryman`` command that lists things.

Piped or redirected (a script, ``| less``, a CI log), a table is printed whole, as wide as its
widest row needs, whatever ``COLUMNS`` says: cutting a key id or a model name to ``gpt-4o-…``
makes the output useless to whoever reads it later. On a terminal it fits the width, cells
folded rather than cut short.
"""

from __future__ import annotations

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table


def print_table(out: Console, table: Table) -> None:
    if out.is_terminal:
        for column in table.columns:
            if not column.no_wrap:  # a column marked no_wrap (an id) is never folded, never cut
                column.overflow = "fold"
        out.print(table)
        return
    needed = Measurement.get(out, out.options.update_width(100_000), table).maximum
    wide = Console(file=out.file, width=max(out.width, needed))  # print(width=…) stops at the console's
    wide.print(table)
