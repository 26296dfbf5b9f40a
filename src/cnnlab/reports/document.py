"""A report as a list of elements, rendered twice, as Markdown and as a self-contained HTML
page, so the two never drift apart. Elements are tuples:

    ("h", level, text)          a heading
    ("p", text)                 a paragraph
    ("table", headers, rows)    rows are lists of cell strings
    ("img", src, caption)       a figure; src is relative to the report's folder
    ("imgrow", [(src, caption), ...])   figures side by side
    ("pre", text)               preformatted YAML
    ("details", summary, text)  folded preformatted YAML

The HTML embeds every figure as a data URI, so the page can be mailed or moved alone.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(doc: list[tuple]) -> str:
    parts = []
    for el in doc:
        kind = el[0]
        if kind == "h":
            parts.append("#" * el[1] + " " + el[2])
        elif kind == "p":
            parts.append(el[1])
        elif kind == "table":
            headers, rows = el[1], el[2]
            # Columns after the first right-aligned, as the HTML's stylesheet does: they hold numbers.
            lines = ["| " + " | ".join(map(_md_cell, headers)) + " |",
                     "| " + " | ".join(["---"] + ["---:"] * (len(headers) - 1)) + " |"]
            lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows]
            parts.append("\n".join(lines))
        elif kind == "img":
            parts.append(f"![{el[2]}]({el[1]})")
        elif kind == "imgrow":
            parts.append("\n".join(f"![{cap}]({src})" for src, cap in el[1]))
        elif kind == "pre":
            parts.append("```yaml\n" + el[1] + "\n```")
        elif kind == "details":
            parts.append(f"<details><summary>{el[1]}</summary>\n\n```yaml\n{el[2]}\n```\n\n</details>")
    return "\n\n".join(parts) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1250px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.85em}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:.9em;color:#555}.row{display:flex;flex-wrap:wrap;gap:1em}
.row figure{flex:1 1 480px}
"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(doc: list[tuple], out: Path) -> str:
    esc = html.escape
    title = next((el[2] for el in doc if el[0] == "h"), "cnnlab report")
    parts = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
             f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"]

    def figure(src: str, cap: str) -> str:
        return (f"<figure><img src=\"{_data_uri(out / src)}\" alt=\"{esc(cap)}\" data-file=\"{esc(src)}\">"
                f"<figcaption>{esc(cap)}</figcaption></figure>")

    for el in doc:
        kind = el[0]
        if kind == "h":
            parts.append(f"<h{el[1]}>{esc(el[2])}</h{el[1]}>")
        elif kind == "p":
            parts.append(f"<p>{esc(el[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{esc(h)}</th>" for h in el[1])
            body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in el[2])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            parts.append(figure(el[1], el[2]))
        elif kind == "imgrow":
            parts.append("<div class=\"row\">" + "".join(figure(s, c) for s, c in el[1]) + "</div>")
        elif kind == "pre":
            parts.append(f"<pre>{esc(el[1])}</pre>")
        elif kind == "details":
            parts.append(f"<details><summary>{esc(el[1])}</summary><pre>{esc(el[2])}</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
