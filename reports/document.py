"""A tiny document model that renders the same content as Markdown and as self-contained HTML.

The report and the comparison page are built once as a list of blocks and written twice: Markdown
for MLflow/Prefect artifacts and terminals, HTML (plots inlined as base64 PNG data URIs, no
external CSS or scripts) for a browser that may be offline. Written by hand because neither
matplotlib nor pandas renders mixed text/table/figure pages, and a Markdown-to-HTML dependency
would still need the images inlined.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1d2430;background:#fff;line-height:1.45}
h1{border-bottom:3px solid #2b6cb0;padding-bottom:.3em}h2{color:#2b6cb0;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}th,td{border:1px solid #cbd5e0;padding:.3em .6em;
text-align:left;vertical-align:top}th{background:#edf2f7}td.best{background:#c6f6d5;font-weight:600}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;background:#f4f6f8}pre{padding:.8em;overflow-x:auto;
white-space:pre-wrap}img{max-width:100%;border:1px solid #e2e8f0;margin:.4em 0}figure{margin:1em 0}
figcaption{color:#4a5568;font-size:.9em}div.scroll{overflow-x:auto}
"""


@dataclass
class Table:
    """Rows of cells under a header; `best` marks cells (row, col) to highlight."""

    header: list[str]
    rows: list[list[str]]
    best: set[tuple[int, int]] = field(default_factory=set)


@dataclass
class Image:
    """A PNG file (relative to the document's directory) with a caption."""

    path: str
    caption: str


@dataclass
class Code:
    """Preformatted text."""

    text: str


@dataclass
class Heading:
    """A section title; level 1 is the document title."""

    text: str
    level: int = 2


@dataclass
class Bullets:
    """A bullet list; items may contain `inline code` in backticks."""

    items: list[str]


@dataclass
class Para:
    """A paragraph of plain text (backticks become code)."""

    text: str


Block = Table | Image | Code | Heading | Bullets | Para


def _inline_html(text: str) -> str:
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    """Markdown with images as links to the PNG files beside it."""
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Para):
            out.append(b.text)
        elif isinstance(b, Bullets):
            out.append("\n".join(f"- {item}" for item in b.items))
        elif isinstance(b, Code):
            out.append(f"```\n{b.text.rstrip()}\n```")
        elif isinstance(b, Image):
            out.append(f"![{b.caption}]({b.path})")
        elif isinstance(b, Table):
            rows = [
                [f"**{c}**" if (i, j) in b.best and c else c for j, c in enumerate(r)] for i, r in enumerate(b.rows)
            ]
            lines = ["| " + " | ".join(map(_md_cell, b.header)) + " |", "|" + "---|" * len(b.header)]
            lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows]
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def to_html(blocks: list[Block], title: str, base_dir: Path) -> str:
    """One self-contained HTML page: inline CSS, images embedded as base64 data URIs."""
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{_inline_html(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            body.append(f"<p>{_inline_html(b.text)}</p>")
        elif isinstance(b, Bullets):
            body.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Code):
            body.append(f"<pre>{html.escape(b.text.rstrip())}</pre>")
        elif isinstance(b, Image):
            data = base64.b64encode((base_dir / b.path).read_bytes()).decode()
            body.append(
                f'<figure><img alt="{html.escape(b.caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(b.caption)}</figcaption></figure>"
            )
        elif isinstance(b, Table):
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in b.header)
            rows = "".join(
                "<tr>"
                + "".join(
                    f'<td class="best">{_inline_html(c)}</td>' if (i, j) in b.best else f"<td>{_inline_html(c)}</td>"
                    for j, c in enumerate(r)
                )
                + "</tr>"
                for i, r in enumerate(b.rows)
            )
            table = f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
            body.append(f'<div class="scroll">{table}</div>')
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
