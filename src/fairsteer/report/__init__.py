"""Self-contained HTML reports (plots embedded as base64 PNG; matplotlib imported lazily)."""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from typing import Any

from fairsteer.files import write_atomic

__all__ = ["Report", "figure"]

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.7em;margin-bottom:.2em}
h2{font-size:1.3em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:1em 0;font-size:.88em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
tr:nth-child(even) td{background:#fafafa}
.meta{color:#666;font-size:.9em}img{max-width:100%;margin:.5em 0}
figure{margin:1em 0}figcaption{color:#555;font-size:.9em}
"""


def figure(width: float = 7.0, height: float = 3.2, ncols: int = 1) -> tuple[Any, Any]:
    """A matplotlib figure on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width, height), squeeze=False, layout="constrained")


class Report:
    """An HTML report built section by section."""

    def __init__(self, title: str, subtitle: str = "") -> None:
        self.title = title
        self.parts: list[str] = [f"<h1>{html.escape(title)}</h1>"]
        if subtitle:
            self.parts.append(f'<p class="meta">{html.escape(subtitle)}</p>')

    def add_heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def add_text(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def add_table(self, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
            for row in rows
        )
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def add_figure(self, fig: Any, caption: str = "") -> None:
        """Embed a matplotlib figure as a base64 PNG and close it."""
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.parts.append(
            f'<figure><img alt="{html.escape(caption)}" '
            f'src="data:image/png;base64,{data}">{cap}</figure>'
        )

    def html(self) -> str:
        return (
            "<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title><style>{CSS}</style></head><body>"
            + "\n".join(self.parts)
            + "</body></html>"
        )

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write the report atomically."""
        write_atomic(path, self.html())
