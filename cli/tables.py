"""Tables that fit the terminal (80 columns when piped): long cells wrap, never get cut."""
from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence


def print_table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, wrap: Sequence[int] = (),
                title: str | None = None) -> None:
    """Print `rows` under `headers`; columns listed in `wrap` fold long values onto more lines."""
    from rich.console import Console
    from rich.table import Table

    width = shutil.get_terminal_size((80, 24)).columns  # COLUMNS, the terminal, or 80 on a pipe
    table = Table(*headers, title=title, pad_edge=False, collapse_padding=True)
    for i, column in enumerate(table.columns):
        column.overflow = "fold"
        column.no_wrap = i not in wrap
    for row in rows:
        table.add_row(*row)
    Console(width=width).print(table)
