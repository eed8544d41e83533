#!/usr/bin/env python3
"""Build ala_nb's documentation site offline: every notebook in nbs/ as an HTML page, in reading order.

    python tools/build_docs.py                      # all notebooks of nbs/ -> _docs/
    python tools/build_docs.py --out DIR nbs/00a_losses.ipynb nbs/12_fig1_per_class.ipynb

nbdev_docs needs quarto; this needs only nbconvert and jupyter-server-mathjax (both in the `[dev]` extra).
Notebooks are exported as committed (never executed): their outputs, figures included, are shown.
Maths is typeset by a local copy of MathJax 2 (HTML-CSS output, STIX-Web fonts) in DIR/mathjax/, so the site works without a network,
opened from the disk (file://) or served (`python -m http.server -d _docs -b 127.0.0.1`).
Pages: index.html (README), contents.html (each notebook's title and summary), one NAME.html per notebook;
every page has a sidebar linking all the others. nbdev's `#|` directive lines are not shown; `#| hide`
cells are left out. Bad input (a notebook that is not in nbs/, an output folder that this script did not
write) -> one line on stderr, exit 2.
"""
import argparse, copy, html, importlib.util, re, shutil, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / 'nbs'
MARKER = '.ala_docs'  # written into the output folder; only a folder holding it is ever emptied
MATHJAX_URL = 'mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe'
WIDGET_MIME = 'application/vnd.jupyter.widget-view+json'
WIDGET_NOTE = '(An interactive widget: open the notebook in Jupyter and run it to use it.)'

class DocsError(Exception): pass

# ---------------------------------------------------------------- notebooks, titles, reading order

def notebooks(names=None):
    "The notebooks to build, in reading order (file-name order of nbs/*.ipynb; nbs/study is not included)."
    if not names: return sorted(NBS.glob('*.ipynb'))
    out = []
    for n in names:
        p = Path(n)
        cands = [p, ROOT / p, NBS / p, NBS / (p.name if p.suffix == '.ipynb' else p.name + '.ipynb')]
        hit = next((c.resolve() for c in cands if c.is_file()), None)
        if hit is None or hit.parent != NBS.resolve() or hit.suffix != '.ipynb':
            raise DocsError(f'{n}: not a notebook in {NBS} (expected e.g. nbs/00a_losses.ipynb)')
        out.append(hit)
    return sorted(set(out))

def title_summary(nb, path):
    "The first markdown cell's `# ` heading and its `> ` summary line (nbdev's convention)."
    for c in nb.cells:
        if c.cell_type != 'markdown': continue
        lines = c.source.splitlines()
        title = next((l[2:].strip() for l in lines if l.startswith('# ')), None)
        if title is None: continue
        summary = ' '.join(l[1:].strip() for l in lines if l.startswith('>'))
        return title, summary
    return path.stem, ''

def inline_md(s):
    "Escape `s` for HTML, rendering only `code` spans (titles and summaries are one line each)."
    parts = s.split('`')
    return ''.join(f'<code>{html.escape(p)}</code>' if i % 2 else html.escape(p) for i, p in enumerate(parts))

# ---------------------------------------------------------------- what a page shows of a notebook

_DIRECTIVE = re.compile(r'^\s*#\|\s*(.*)$')

def prepare(nb):
    "A copy of `nb` as the site shows it: no `#|` lines, no `#| hide` cells, widgets as a note, no widget state."
    nb = copy.deepcopy(nb)
    nb.metadata.pop('widgets', None)  # the state would make nbconvert load a widget manager from the web
    cells = []
    for c in nb.cells:
        if c.cell_type == 'code':
            lines = c.source.splitlines()
            directives = []
            while lines and _DIRECTIVE.match(lines[0]):
                directives.append(_DIRECTIVE.match(lines.pop(0)).group(1).strip())
            words = {d.split(':')[0].split()[0].strip() if d else '': d for d in directives}
            if 'hide' in words: continue
            c.source = '\n'.join(lines).strip('\n')
            if 'hide_input' in words or words.get('echo', '').replace(' ', '') == 'echo:false':
                c.transient = {'remove_source': True}
            if words.get('output', '').replace(' ', '') == 'output:false': c.outputs = []
            for o in c.get('outputs', []):
                data = o.get('data', {})
                if WIDGET_MIME in data:
                    data.pop(WIDGET_MIME)
                    if not any(k.startswith('image/') for k in data): data['text/plain'] = WIDGET_NOTE
            if not c.source and not c.get('outputs'): continue
        cells.append(c)
    # nbdev makes the first `# ` heading the page's title: put that cell first (a `default_exp` cell may precede it)
    first = next((i for i, c in enumerate(cells) if c.cell_type == 'markdown'
                  and any(l.startswith('# ') for l in c.source.splitlines())), None)
    if first: cells.insert(0, cells.pop(first))
    nb.cells = cells
    return nb

# ---------------------------------------------------------------- the page template

CSS = """
body.jp-Notebook { margin: 0 0 0 17rem; padding: 0 1rem 2rem 1rem; }
nav.ala-nav { position: fixed; top: 0; left: 0; bottom: 0; width: 16rem; overflow-y: auto;
  padding: 1rem 0.75rem; box-sizing: border-box; background: #f6f7f9; border-right: 1px solid #dde;
  font: 14px/1.35 -apple-system, BlinkMacSystemFont, 'Segoe UI', Helvetica, Arial, sans-serif; }
nav.ala-nav .ala-site { font-weight: 600; font-size: 1.15rem; display: block; margin-bottom: .5rem; }
nav.ala-nav ol, nav.ala-nav ul { padding-left: 0; list-style: none; margin: 0 0 .75rem 0; }
nav.ala-nav li a { display: block; padding: .2rem .4rem; border-radius: 4px; color: #1a4f8b; text-decoration: none; }
nav.ala-nav li a:hover { background: #e4e9f2; }
nav.ala-nav li a.ala-current { background: #dbe5f5; font-weight: 600; color: #0b2f5e; }
nav.ala-nav .ala-stem { color: #778; font-size: .8rem; }
nav.ala-pager { display: flex; justify-content: space-between; margin: 2rem 0 0 0; padding-top: 1rem;
  border-top: 1px solid #dde; font: 14px -apple-system, BlinkMacSystemFont, 'Segoe UI', Helvetica, Arial, sans-serif; }
table.ala-contents td { vertical-align: top; padding: .35rem .6rem; text-align: left; }
@media (max-width: 50rem) { nav.ala-nav { position: static; width: auto; }
  body.jp-Notebook { margin-left: 0; } }
"""

TEMPLATE = r"""{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block html_head_js_mathjax -%}
<script type="text/x-mathjax-config">
MathJax.Hub.Config({"HTML-CSS": {availableFonts: [], preferredFont: null, imageFont: null, webFont: "STIX-Web"}});
</script>
{{ super() }}
{%- endblock html_head_js_mathjax -%}
{% block extra_css %}<style type="text/css">{{ resources.ala_css }}</style>{% endblock extra_css %}
{%- block body_header -%}
<body class="jp-Notebook" data-jp-theme-light="true" data-jp-theme-name="JupyterLab Light">
{{ resources.ala_nav }}
<main>
{%- endblock body_header -%}
{% block body_footer %}
{{ resources.ala_pager }}
</main>
</body>
{% endblock body_footer %}
"""

def exporter():
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter
    return HTMLExporter(template_name='lab', template_file='ala_page.html.j2', mathjax_url=MATHJAX_URL,
                        extra_loaders=[DictLoader({'ala_page.html.j2': TEMPLATE})],
                        exclude_input_prompt=True, exclude_output_prompt=True)

def nav_html(pages, current):
    "The sidebar: home, contents, then every notebook in reading order; `current` is marked."
    def li(href, label, stem=''):
        cls = ' class="ala-current" aria-current="page"' if href == current else ''
        st = f'<span class="ala-stem">{html.escape(stem)}</span><br>' if stem else ''
        return f'<li><a href="{href}"{cls}>{st}{label}</a></li>'
    items = '\n'.join(li(p['href'], inline_md(p['title']), p['stem']) for p in pages)
    return (f'<nav class="ala-nav" aria-label="site">\n<a class="ala-site" href="index.html">ala_nb</a>\n'
            f'<ul>{li("index.html", "Home (README)")}{li("contents.html", "Contents")}</ul>\n'
            f'<ol>\n{items}\n</ol>\n</nav>')

def pager_html(pages, i):
    prev = pages[i - 1] if i > 0 else None
    nxt = pages[i + 1] if i + 1 < len(pages) else None
    a = lambda p, arrow: (f'<a href="{p["href"]}">{arrow} {inline_md(p["title"])}</a>' if p else '<span></span>')
    return f'<nav class="ala-pager" aria-label="pages">{a(prev, "←")}{a(nxt, "→")}</nav>'

# ---------------------------------------------------------------- home and contents pages

def contents_md(pages):
    rows = '\n'.join(f'<tr><td><a href="{p["href"]}">{inline_md(p["title"])}</a><br>'
                     f'<span class="ala-stem"><code>nbs/{html.escape(p["stem"])}.ipynb</code></span></td>'
                     f'<td>{inline_md(p["summary"])}</td></tr>' for p in pages)
    return ('# Contents\n\n> The notebooks of `ala_nb`, in reading order. Each is a page of this site, '
            'shown as committed (with its outputs).\n\n'
            f'<table class="ala-contents"><tbody>\n{rows}\n</tbody></table>\n')

def link_notebook_names(body, pages):
    "In the README's page, turn `nbs/NAME.ipynb` code spans into links to the notebook's page."
    known = {p['stem']: p['href'] for p in pages}
    def sub(m):
        href = known.get(m.group(1))
        return f'<a href="{href}">{m.group(0)}</a>' if href else m.group(0)
    return re.sub(r'<code>nbs/([\w.-]+?)\.ipynb</code>', sub, body)

def link_notebooks(body, name, log):
    "Links to `NAME.ipynb` (a notebook of nbs/) point at its page `NAME.html`; other local links are checked."
    def sub(m):
        stem, frag = m.group(1), m.group(2) or ''
        if (NBS / f'{stem}.ipynb').is_file(): return f'href="{stem}.html{frag}"'
        log(f'  warning: {name}: link to {stem}.ipynb, which is not a notebook in nbs/ (left as it is)')
        return m.group(0)
    return re.sub(r'href="(?:\./)?(?:nbs/)?([\w.-]+)\.ipynb(#[^"]*)?"', sub, body)

def md_notebook(text):
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(text)]
    return nb

# ---------------------------------------------------------------- the build

def copy_mathjax(out):
    "Copy the MathJax 2 that jupyter-server-mathjax ships (less translations and the SVG output) to out/mathjax."
    spec = importlib.util.find_spec('jupyter_server_mathjax')
    src = Path(next(iter(spec.submodule_search_locations))) / 'static' if spec else None
    if src is None or not (src / 'MathJax.js').is_file():
        raise DocsError('jupyter_server_mathjax: not installed (MathJax for offline maths); '
                        'expected it from `pip install -e ".[dev]"`')
    shutil.copytree(src, out / 'mathjax', ignore=shutil.ignore_patterns('localization', 'SVG', '*.py', '__pycache__'))

def prepare_out(out):
    if out.exists():
        if not out.is_dir(): raise DocsError(f'{out}: exists and is not a folder (expected an output folder)')
        if any(out.iterdir()) and not (out / MARKER).exists():
            raise DocsError(f'{out}: a non-empty folder that build_docs.py did not write; refusing to empty it')
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text('written by tools/build_docs.py; emptied and rewritten by each build\n')

def build(out=ROOT / '_docs', names=None, log=print):
    "Build the site into `out`; returns the list of pages written (file names)."
    import nbformat
    out = Path(out)
    paths = notebooks(names)
    nbs = [nbformat.read(p, as_version=4) for p in paths]
    pages = []
    for p, nb in zip(paths, nbs):
        title, summary = title_summary(nb, p)
        pages.append(dict(stem=p.stem, href=p.stem + '.html', title=title, summary=summary))
    prepare_out(out)
    copy_mathjax(out)
    ex = exporter()
    def write(name, nb, title, pager=''):
        nb.metadata['title'] = title.replace('`', '')
        res = dict(ala_css=CSS, ala_nav=nav_html(pages, name), ala_pager=pager,
                   metadata=dict(name=title))
        body, _ = ex.from_notebook_node(nb, resources=res)
        if name == 'index.html': body = link_notebook_names(body, pages)
        body = link_notebooks(body, name, log)
        (out / name).write_text(body, encoding='utf-8')
        log(f'  {name}')
    readme = (ROOT / 'README.md').read_text(encoding='utf-8')
    write('index.html', md_notebook(readme), 'ala_nb')
    write('contents.html', md_notebook(contents_md(pages)), 'ala_nb: contents')
    for i, (pg, nb) in enumerate(zip(pages, nbs)):
        write(pg['href'], prepare(nb), f'{pg["title"]} · ala_nb', pager_html(pages, i))
    return ['index.html', 'contents.html'] + [p['href'] for p in pages]

def main(argv=None):
    ap = argparse.ArgumentParser(prog='python tools/build_docs.py', description=__doc__.split('\n\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog='example: python tools/build_docs.py && python -m http.server -d _docs -b 127.0.0.1')
    ap.add_argument('notebooks', nargs='*', help='notebooks to build (default: every nbs/*.ipynb)')
    ap.add_argument('--out', default=str(ROOT / '_docs'), help='output folder (default: _docs/ of the repository)')
    a = ap.parse_args(argv)
    try:
        written = build(Path(a.out), a.notebooks)
    except DocsError as e:
        print(f'build_docs: {e}', file=sys.stderr)
        return 2
    print(f'{len(written)} pages in {Path(a.out).resolve()}; open {Path(a.out).resolve() / "index.html"}')
    return 0

if __name__ == '__main__':
    sys.exit(main())
