"""report.html: the markdown report as one self-contained page (tables as HTML, every
PNG inlined as a data URI), readable offline and attachable anywhere."""
import base64
import html
import os
import re


def page(title, markdown_text, pngs, run_dir):
    body = "\n".join(blocks(markdown_text))
    images = "".join(
        f'<figure><img alt="{html.escape(os.path.basename(p))}" src="data:image/png;base64,'
        f'{base64.b64encode(open(p, "rb").read()).decode()}"><figcaption>'
        f'{html.escape(os.path.basename(p))}</figcaption></figure>\n' for p in pngs)
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>"
            f"{html.escape(title)}</title><style>{STYLE}</style></head><body>\n{body}\n"
            f"<h2>Plots</h2>\n{images}</body></html>\n")


STYLE = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;"
         "padding:0 1em;color:#222}table{border-collapse:collapse;font-size:13px;"
         "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
         "td:nth-child(-n+3),th{text-align:left}th{background:#f3f3f3}"
         "img{max-width:100%}figure{margin:1em 0}code{background:#f3f3f3;padding:0 3px}")


def inline(text):
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def blocks(markdown_text):
    """Headings, paragraphs, bullet lists and pipe tables; images are added separately."""
    lines, out, i = markdown_text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{inline(line[level:].strip())}</h{level}>")
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                if not re.fullmatch(r"\|(---\|)+", lines[i]):
                    rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            head, *rest = rows
            out.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) +
                       "</tr>" + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r)
                                         + "</tr>" for r in rest) + "</table>")
            continue
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif line.strip() and not line.startswith("!["):
            out.append(f"<p>{inline(line)}</p>")
        i += 1
    return out
