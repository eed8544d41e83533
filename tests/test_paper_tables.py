"""`ala_nb.paper.PAPER_ROWS` against the paper itself: a strict parse of Tables 1-4 out of the paper's text
(../shared/paper/zhao2022_ala_aaai.txt beside the repository) compared number by number, blank by blank, mark by mark.
nbs/10_paper_tables.ipynb holds a shorter version of the same check and the tests of the rest of the module."""
import re
from pathlib import Path
import pytest
from ala_nb.paper import FIELDS, MARKS, PAPER_ROWS, paper_table

PAPER_TXT = Path(__file__).resolve().parents[1].parent/'shared'/'paper'/'zhao2022_ala_aaai.txt'
needs_paper = pytest.mark.skipif(not PAPER_TXT.is_file(), reason=f"the paper's text is not at {PAPER_TXT} "
                                 "(shared/paper/ beside the repository, as in CI)")

# what each table must look like: number of accuracy columns, the backbones named in its caption, its data set
SHAPE = {1: (8, ('ResNet-50', 'ResNeXt-50'), 'ImageNet-LT'), 2: (4, ('ResNet-50',), 'iNaturalist 2018'),
         3: (4, ('ResNet-152',), 'Places-LT'), 4: (4, ('ResNeXt-50',), 'ImageNet-LT')}
BLANK = {'-', '='}                       # '=' is an OCR slip for '-' (the paper's README)
YES, NO = {'/', '1', '✓'}, {'X'}         # Table 4's check marks as the extraction wrote them


def plain(name):
    r"Table 4's LaTeX names as text: `$\mathcal{DF}\cdot\mathcal{A}^{LDAM}$` -> `DF·A^LDAM`."
    s = name.replace('$', '').replace(r'\cdot', '·')
    s = re.sub(r'\\mathcal\{(\w+)\}', r'\1', s)
    s = re.sub(r'\^\{(\w+)\}', r'^\1', s)
    return re.sub(r'\s*·\s*', '·', s).strip()


def number(tok, where):
    if tok in BLANK: return None
    if not re.fullmatch(r'\d{1,3}\.\d', tok): raise ValueError(f'{where}: {tok!r} is neither a number like 41.6 nor a blank')
    return float(tok)


def parse_tables(text):
    """{table: dict(caption, rows)} from the paper's text; a row is dict(printed, source, numbers, marks).
    Tab-separated lines belong to the next line that starts 'Table N:' (the caption under the table)."""
    pending, tables = [], {}
    for i, line in enumerate(text.splitlines(), 1):
        if '\t' in line: pending.append((i, line.split('\t')))
        elif m := re.match(r'Table (\d): (.*)', line):
            if not pending: raise ValueError(f'line {i}: caption of Table {m[1]} with no table rows above it')
            tables[int(m[1])] = dict(caption=m[2], lines=pending)
            pending = []
    if pending: raise ValueError(f'line {pending[0][0]}: table rows with no caption after them')
    for t, tab in tables.items():
        ncols = SHAPE[t][0]
        rows = []
        for i, (name, *cells) in tab.pop('lines'):
            if name.strip() in ('', 'Method'): continue  # header lines
            printed, source = re.fullmatch(r'(.*?)\s*([†‡*]?)', plain(name)).groups()
            toks = ' '.join(cells).split()  # Table 4 prints "Few All" in one cell
            marks = None
            if t == 4:
                bad = [v for v in toks[:3] if v not in YES | NO]
                if bad: raise ValueError(f'line {i}: check mark {bad[0]!r}, expected one of X / 1 ✓')
                marks, toks = {k: v in YES for k, v in zip(MARKS, toks[:3])}, toks[3:]
            if len(toks) != ncols: raise ValueError(f'line {i}: {len(toks)} accuracy cells, expected {ncols}: {toks}')
            rows.append(dict(printed=printed, source=source, numbers=[number(v, f'line {i}') for v in toks], marks=marks))
        tab['rows'] = rows
    return tables


def expected(t, rows=None):
    "`PAPER_ROWS` of table t in the layout the paper prints: one entry per method, Table 1's two backbones side by side."
    per = {}
    for r in paper_table(t, PAPER_ROWS if rows is None else rows): per.setdefault(r['method'], []).append(r)
    archs = SHAPE[t][1]
    out = []
    for rs in per.values():
        by_arch = {r['arch']: r for r in rs}
        out.append(dict(printed=rs[0]['printed'], source=rs[0]['source'], marks=rs[0]['marks'],
                        numbers=[by_arch[a][g] if a in by_arch else 'missing' for a in archs for g in FIELDS],
                        records=len(rs), datasets={r['dataset'] for r in rs}))
    return out


def mismatches(tables, rows=None):
    "Every difference between the parsed tables and `PAPER_ROWS`, as lines naming table, row and column."
    out = []
    for t, (ncols, archs, dataset) in SHAPE.items():
        if t not in tables: out.append(f'Table {t}: not found in the paper'); continue
        got, want = tables[t]['rows'], expected(t, rows)
        if len(got) != len(want): out.append(f'Table {t}: the paper has {len(got)} rows, PAPER_ROWS {len(want)}')
        cols = [f'{a} {g}' for a in archs for g in FIELDS]
        for k, (p, w) in enumerate(zip(got, want), 1):
            where = f"Table {t} row {k} ({p['printed']})"
            for f in ('printed', 'source', 'marks'):
                if p[f] != w[f]: out.append(f'{where}: {f} {p[f]!r} in the paper, {w[f]!r} in PAPER_ROWS')
            for c, a, b in zip(cols, p['numbers'], w['numbers']):
                if a != b: out.append(f"{where} {c}: {'-' if a is None else a} in the paper, {b} in PAPER_ROWS")
            if w['records'] != len(archs): out.append(f'{where}: {w["records"]} records, expected one per backbone')
            if w['datasets'] != {dataset}: out.append(f'{where}: data set {w["datasets"]}, expected {dataset}')
    extra = {r['table'] for r in (PAPER_ROWS if rows is None else rows)} - set(SHAPE)
    if extra: out.append(f'PAPER_ROWS has tables {sorted(extra)} the paper does not')
    return out


@pytest.fixture(scope='module')
def tables():
    if not PAPER_TXT.is_file(): pytest.skip(f"the paper's text is not at {PAPER_TXT}")
    return parse_tables(PAPER_TXT.read_text(encoding='utf-8'))


@needs_paper
def test_the_paper_has_four_tables_of_the_expected_shape(tables):
    assert sorted(tables) == [1, 2, 3, 4]
    assert [len(tables[t]['rows']) for t in (1, 2, 3, 4)] == [12, 11, 12, 6]
    for t, (_, archs, dataset) in SHAPE.items():  # each caption names its data set and exactly its backbones
        cap = tables[t]['caption'].replace('-', '')
        assert dataset.replace('-', '') in cap, (t, tables[t]['caption'])
        named = {a for a in ('ResNet-50', 'ResNeXt-50', 'ResNet-152') if a.replace('-', '') in cap}
        assert named == set(archs), (t, named, tables[t]['caption'])
    n = lambda t, k: tables[t]['rows'][k]['numbers']
    assert n(1, 5)[:4] == [None]*4 and n(1, 5)[4:] == [62.7, 48.8, 31.6, 51.8]  # Casual Norm: the '=' slip is a blank
    assert n(1, 11) == [62.4, 49.1, 35.7, 52.4, 64.1, 49.9, 34.7, 53.3]          # ALA
    assert tables[4]['rows'][5] == dict(printed='DF·QF (ALA Loss)', source='', numbers=[64.1, 49.9, 34.7, 53.3],
                                        marks=dict(LDAM=False, DF=True, QF=True))


@needs_paper
def test_paper_rows_are_the_papers_tables(tables):
    assert mismatches(tables) == []


@needs_paper
def test_a_changed_number_blank_mark_or_row_is_caught(tables):
    def changed(pick, **new):
        rows = [dict(r, **new) if pick(r) else r for r in PAPER_ROWS]
        return mismatches(tables, rows)
    ala_x50 = lambda r: r['table'] == 1 and r['method'] == 'ALA' and r['arch'] == 'ResNeXt-50'
    assert changed(ala_x50, few=34.8) == ['Table 1 row 12 (ALA Loss) ResNeXt-50 few: 34.7 in the paper, 34.8 in PAPER_ROWS']
    focal_r50 = lambda r: r['table'] == 1 and r['method'] == 'Focal' and r['arch'] == 'ResNet-50'
    assert changed(focal_r50, many=0.0) == ['Table 1 row 2 (Focal Loss) ResNet-50 many: - in the paper, 0.0 in PAPER_ROWS']
    assert changed(lambda r: r['table'] == 2 and r['method'] == 'ALA', all=None) == [
        'Table 2 row 11 (ALA Loss) ResNet-50 all: 70.7 in the paper, None in PAPER_ROWS']
    assert changed(lambda r: r['table'] == 3 and r['method'] == 'OLTR', source='‡') == [
        "Table 3 row 4 (OLTR): source '†' in the paper, '‡' in PAPER_ROWS"]
    qf = lambda r: r['table'] == 4 and r['method'] == 'QF'
    assert changed(qf, marks=dict(LDAM=True, DF=False, QF=True))[0].startswith('Table 4 row 4 (QF): marks')
    assert changed(lambda r: r['table'] == 4, arch='ResNet-50') != []  # Table 4 is ResNeXt-50
    dropped = [r for r in PAPER_ROWS if not (r['table'] == 3 and r['method'] == 'ALA')]
    assert mismatches(tables, dropped) == ['Table 3: the paper has 12 rows, PAPER_ROWS 11']


def test_parser_on_a_made_up_text():
    "Runs without the paper: blanks, the '=' slip, marks, the merged 'Few All' cell, bad cells."
    text = '\n'.join([
        'Method\tTop-1 Accuracy @ R-50\t\t\t\tTop-1 Accuracy @ X-50\t\t\t',
        '\tMany\tMedium\tFew\tAll\tMany\tMedium\tFew\tAll',
        'Cross Entropy †\t64.0\t33.8\t5.8\t41.6\t65.9\t37.5\t7.7\t44.4',
        'Casual Norm ‡\t-\t=\t-\t-\t62.7\t48.8\t31.6\t51.8',
        'Table 1: ImageNet-LT, ResNet50 (R-50) and ResNeXt50 (X-50).', 'prose',
        '\tLDAM\tDF\tQF\tMany\tMedium\tFew All',
        '$\\mathcal{DF}\\cdot\\mathcal{A}^{LDAM}$\t/\t1\tX\t63.5\t48.4\t31.9 52.0',
        'Table 4: ablation, ImageNet-LT with ResNeXt-50.'])
    tabs = parse_tables(text)
    assert [r['numbers'] for r in tabs[1]['rows']] == [[64.0, 33.8, 5.8, 41.6, 65.9, 37.5, 7.7, 44.4], [None]*4 + [62.7, 48.8, 31.6, 51.8]]
    assert [(r['printed'], r['source']) for r in tabs[1]['rows']] == [('Cross Entropy', '†'), ('Casual Norm', '‡')]
    assert tabs[4]['rows'] == [dict(printed='DF·A^LDAM', source='', numbers=[63.5, 48.4, 31.9, 52.0],
                                    marks=dict(LDAM=True, DF=True, QF=False))]
    with pytest.raises(ValueError, match="line 1: 'n/a' is neither a number"):
        parse_tables('CE\tn/a\t1.0\t2.0\t3.0\nTable 2: x')
    with pytest.raises(ValueError, match='3 accuracy cells, expected 4'):
        parse_tables('CE\t1.0\t2.0\t3.0\nTable 3: x')
    with pytest.raises(ValueError, match="check mark '\\?'"):
        parse_tables('QF\tX\t?\tX\t1.0\t2.0\t3.0 4.0\nTable 4: x')
