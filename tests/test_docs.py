"""The offline documentation site (tools/build_docs.py), built from three notebooks into a temporary folder."""
import html, importlib.util, json, os, re, shutil, subprocess, sys, tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location('build_docs', ROOT / 'tools' / 'build_docs.py')
bd = importlib.util.module_from_spec(spec); spec.loader.exec_module(bd)

HIDDEN = re.compile(r'(\s*#\|.*\n)*\s*#\|\s*hide\s*(\n|$)')
NBS = ['00a_losses', '06_cli', '12_fig1_per_class']  # maths, plain code, figures

class Page(HTMLParser):
    "The parts of a page the tests look at: nav links, every src/href, scripts' src."
    def __init__(self, text):
        super().__init__(); self.nav, self.links, self.scripts, self.imgs = [], [], [], []
        self._in_nav = 0; self.feed(text)
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == 'nav' and 'ala-nav' in (a.get('class') or ''): self._in_nav += 1
        if tag == 'a' and a.get('href'):
            self.links.append(a['href'])
            if self._in_nav: self.nav.append(a['href'])
        if tag == 'link' and a.get('href'): self.links.append(a['href'])
        if tag == 'script' and a.get('src'): self.scripts.append(a['src'])
        if tag == 'img' and a.get('src'): self.imgs.append(a['src'])
    def handle_endtag(self, tag):
        if tag == 'nav' and self._in_nav: self._in_nav -= 1

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp('docs') / 'site'
    written = bd.build(out, [f'nbs/{n}.ipynb' for n in NBS], log=lambda *a: None)
    return out, written

def nb_json(stem): return json.loads((ROOT / 'nbs' / f'{stem}.ipynb').read_text())

def test_one_page_per_notebook(site):
    out, written = site
    assert written == ['index.html', 'contents.html'] + [f'{n}.html' for n in NBS]
    assert sorted(p.name for p in out.glob('*.html')) == sorted(written)

def test_every_page_links_every_page(site):
    out, written = site
    for name in written:
        p = Page((out / name).read_text())
        assert set(p.nav) == set(written), (name, p.nav)
        for href in p.links:  # every local link resolves to a file of the site
            if re.match(r'[a-z]+:|#', href): continue
            target = href.split('#')[0]  # a page of the site, or of a notebook this partial build left out
            assert (out / target).is_file() or (target.endswith('.html') and
                    (ROOT / 'nbs' / target.replace('.html', '.ipynb')).is_file()), (name, href)

def test_mathjax_local_and_no_remote_script(site):
    out, written = site
    for name in written:
        text = (out / name).read_text()
        p = Page(text)
        assert p.scripts == [bd.MATHJAX_URL], (name, p.scripts)
        assert (out / p.scripts[0].split('?')[0]).is_file()
        assert not re.search(r'''(src|href)=["']?(https?:)?//[^"']*\.(m?js|css)|import\(["']https?:|@import''', text), name
    for part in ('config/TeX-AMS-MML_HTMLorMML-full.js', 'config/Safe.js', 'jax/input/TeX/config.js',
                 'jax/output/HTML-CSS/fonts/STIX-Web/fontdata.js', 'fonts/HTML-CSS/STIX-Web/woff'):
        assert (out / 'mathjax' / part).exists(), part

def test_titles_summaries_maths_figures(site):
    import nbformat
    out, _ = site
    contents = (out / 'contents.html').read_text()
    for n in NBS:  # the title and summary of the first markdown cell, found independently
        md = next(''.join(c['source']) for c in nb_json(n)['cells'] if c['cell_type'] == 'markdown')
        title = re.search(r'^# (.+)$', md, re.M).group(1).strip()
        summary = re.search(r'^> (.+)$', md, re.M).group(1).strip()
        assert bd.title_summary(nbformat.read(ROOT / 'nbs' / f'{n}.ipynb', as_version=4), Path(n)) == (title, summary)
        assert f'href="{n}.html">{bd.inline_md(title)}</a>' in contents
        page = (out / f'{n}.html').read_text()
        assert f'<title>{html.escape(title.replace("`", ""), quote=False)} · ala_nb</title>' in page
        assert '#| export' not in page and 'default_exp' not in page
    # the maths is left as TeX for MathJax: eq. 7's quantity factor is in the losses page
    assert r'\cos\theta_y' in (out / '00a_losses.html').read_text() or r'\cos \theta_y' in (out / '00a_losses.html').read_text()
    # every PNG output of the figure notebook outside `#| hide` cells is on its page, as committed
    cells = nb_json('12_fig1_per_class')['cells']
    pngs = [o['data']['image/png'] for c in cells if c['cell_type'] == 'code' and not HIDDEN.match(''.join(c['source']))
            for o in c.get('outputs', []) if 'image/png' in o.get('data', {})]
    imgs = Page((out / '12_fig1_per_class.html').read_text()).imgs
    assert len(pngs) >= 1 and len(imgs) == len(pngs)
    assert [i.split(',', 1)[1] for i in imgs] == [p if isinstance(p, str) else ''.join(p) for p in pngs]
    # README is the home page, its `nbs/NAME.ipynb` names link to the pages built
    assert '<a href="00a_losses.html"><code>nbs/00a_losses.ipynb</code></a>' in (out / 'index.html').read_text()

def test_prepare_hides_directives_and_widgets():
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.metadata['widgets'] = {'state': {}}
    w = nbformat.v4.new_output('display_data', data={bd.WIDGET_MIME: {'model_id': 'x'}, 'text/plain': 'interactive(...)'})
    nb.cells = [nbformat.v4.new_code_cell('#| default_exp losses'),
                nbformat.v4.new_markdown_cell('# Title\n\n> summary'),
                nbformat.v4.new_code_cell('#| export\nx = 1'),
                nbformat.v4.new_code_cell('#| hide\nsecret = 2'),
                nbformat.v4.new_code_cell('#| echo: false\nshown_output = 3'),
                nbformat.v4.new_code_cell('explore()', outputs=[w])]
    p = bd.prepare(nb)
    assert [c.source for c in p.cells] == ['# Title\n\n> summary', 'x = 1', 'shown_output = 3', 'explore()']
    assert p.cells[2].transient == {'remove_source': True}
    assert p.cells[3].outputs[0]['data'] == {'text/plain': bd.WIDGET_NOTE}
    assert 'widgets' not in p.metadata and 'widgets' in nb.metadata  # the notebook itself is untouched

def test_bad_input_one_line_exit_2(tmp_path, capsys):
    assert bd.main(['--out', str(tmp_path / 'x'), 'nbs/no_such_notebook.ipynb']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'no_such_notebook' in err and 'not a notebook in' in err
    assert bd.main(['--out', str(tmp_path / 'x'), 'nbs/study']) == 2  # a folder, not a notebook
    foreign = tmp_path / 'mine'; foreign.mkdir(); (foreign / 'keep.txt').write_text('mine')
    assert bd.main(['--out', str(foreign), 'nbs/06_cli.ipynb']) == 2
    assert 'did not write' in capsys.readouterr().err and (foreign / 'keep.txt').read_text() == 'mine'

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')

@pytest.mark.skipif(CHROMIUM is None, reason='chromium is not installed')
def test_in_headless_chromium(site):
    "MathJax typesets the losses page from the local copy, with no network, opened from the disk."
    out, _ = site
    with tempfile.TemporaryDirectory() as prof:
        r = subprocess.run([CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                            '--disable-background-networking', '--disable-component-update', '--disable-sync',
                            f'--user-data-dir={prof}', '--virtual-time-budget=10000', '--dump-dom',
                            (out / '00a_losses.html').as_uri()], capture_output=True, text=True, timeout=50)
    dom = r.stdout
    assert 'class="MathJax_Display"' in dom and dom.count('class="MathJax"') > 20, r.stderr[-2000:]
    assert 'class="MathJax_Error"' not in dom and 'Math Processing Error' not in dom
    assert 'class="ala-nav"' in dom
