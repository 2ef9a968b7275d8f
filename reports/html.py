"""``index.html``: the report's pictures and tables on one page that opens from disk.

Everything it shows is in the report folder (images by relative link) or in the page itself (the
tables, the interactive plot, its style and its few lines of script): no server, no internet, no
CDN.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from reports.figures import srcset
from reports.tables import Table

STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px auto; max-width: 1180px;
  color: #222; padding: 0 16px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table.data { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
table.data caption { text-align: left; font-weight: bold; padding: 4px 0; }
table.data th, table.data td { border: 1px solid #ddd; padding: 3px 7px; }
table.data th { background: #f3f5f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } td.na { color: #999; }
p.note { font-size: 12px; color: #555; max-width: 900px; }
.pics { display: flex; flex-wrap: wrap; gap: 16px; } .pics figure { margin: 0; }
.pics img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 12px; color: #555; }
.banner { background: #fff7d6; border: 1px solid #e6c200; padding: 6px 10px; }
.files a { margin-right: 12px; }
"""


def _links(files: Sequence[str]) -> str:
    e = html.escape
    return '<p class="files">' + "".join(f'<a href="{e(f)}">{e(f)}</a>' for f in files) + "</p>"


def _figure(png: str, svg: str, caption: str) -> str:
    e = html.escape
    return (
        f'<figure><a href="{e(svg)}"><img srcset="{e(srcset(png))}" alt="{e(caption)}"></a>'
        f'<figcaption>{e(caption)} (<a href="{e(svg)}">SVG</a>)</figcaption></figure>'
    )


def index_page(
    *,
    title: str,
    summary: Table,
    banner: str | None,
    tables: Sequence[Table],
    plot_fragment: str,
    plot_style: str,
    plot_script: str,
    hypervolume_note: str,
    downloads: Sequence[str],
    final_tables: Sequence[Table] = (),
    setup: Table | None = None,
    plot_note: str = "",
) -> str:
    """The whole page as text."""
    e = html.escape
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{STYLE}{plot_style}</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    if banner:
        parts.append(f'<p class="banner">{e(banner)}</p>')
    if setup is not None:
        parts.append('<section id="setup">')
        parts.append(setup.to_html())
        parts.append("</section>")
    parts.append(summary.to_html())
    parts.append("<h2>Pareto fronts</h2>")
    parts.append(
        '<div class="pics">'
        + _figure("pareto_macs.png", "pareto_macs.svg", "validation accuracy against MACs")
        + _figure("pareto_params.png", "pareto_params.svg", "validation accuracy against params")
        + "</div>"
    )
    if plot_note:
        parts.append(f'<p class="note footnote">{e(plot_note.strip())} Drawn hollow, named with †.</p>')
    parts.append(
        '<h2>Interactive</h2><p class="note">Hover a point for trial, arch_id, params, MACs, accuracy and '
        'NetScore; click a legend entry to hide or show it. Also as <a href="interactive.html">'
        "interactive.html</a>.</p>"
    )
    parts.append(plot_fragment)
    for t in tables:
        parts.append(f"<h2>{e(t.title)}</h2>")
        parts.append(t.to_html())
        parts.append(_links([f"{t.name}.md", f"{t.name}.csv"]))
    if final_tables:
        parts.append('<h2 id="final-stage">Final stage (full training, test split)</h2>')
        parts.append(
            '<p class="note">The models of the final stage were retrained under one final '
            "configuration; their figures are shown here only, never beside the proxy's above.</p>"
        )
        parts.append(
            '<div class="pics">'
            + _figure("final_pareto_macs.png", "final_pareto_macs.svg", "final accuracy against MACs")
            + _figure("final_pareto_params.png", "final_pareto_params.svg", "final accuracy against params")
            + "</div>"
        )
        for t in final_tables:
            parts.append(f"<h3>{e(t.title)}</h3>")
            parts.append(t.to_html())
            parts.append(_links([f"{t.name}.md", f"{t.name}.csv"]))
    parts.append("<h2>Search progress</h2>")
    parts.append(
        '<div class="pics">'
        + _figure("progress.png", "progress.svg", "hypervolume and best NetScore over trials and wall time")
        + "</div>"
    )
    parts.append(f'<p class="note">{e(hypervolume_note)}</p>')
    parts.append("<h2>Files</h2>")
    parts.append(_links(downloads))
    parts.append(f'<div id="iplot-tip"></div><script>{plot_script}</script></body></html>\n')
    return "\n".join(parts)
