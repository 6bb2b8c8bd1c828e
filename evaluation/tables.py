"""Plain-text result tables: what the training loop, the evaluation scripts and the benchmarks print."""
from __future__ import annotations

import numpy as np


def format_table(rows: list[dict], columns: list[str]) -> str:
    """Plain-text table: one row per dict, numeric cells with 4 decimals."""
    cells = [[str(c) for c in columns]]
    for row in rows:
        cells.append([f'{row[c]:.4f}' if isinstance(row.get(c), float) else str(row.get(c, '')) for c in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ['  '.join(v.ljust(widths[i]) if i == 0 else v.rjust(widths[i]) for i, v in enumerate(r)) for r in cells]
    lines.insert(1, '  '.join('-' * w for w in widths))
    return '\n'.join(lines)


def validation_table(rows: list[dict]) -> str:
    """Per-image rows plus the average, bicubic columns beside the model's."""
    if not rows:
        return '(no validation images)'
    metrics = [k for k in rows[0] if k != 'name' and not k.startswith('bicubic_')]
    columns = ['name']
    for metric in metrics:
        if f'bicubic_{metric}' in rows[0]:
            columns.append(f'bicubic_{metric}')
        columns.append(metric)
    average = {'name': 'average', **{c: float(np.mean([r[c] for r in rows])) for c in columns[1:]}}
    return format_table(rows + [average], columns)
