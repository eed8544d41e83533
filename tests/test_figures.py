"""`ala_figures` on real run folders: a tiny run trained here with `ala_train`, and the committed study in nbs/study."""
import json, os, re, struct, zlib
from pathlib import Path
import matplotlib; matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np
import pytest

from clitools import ROOT, run
from ala_nb.runs import load_runs, by_method
from ala_nb.fig_per_class import plot_per_class, TEXT_WIDTH
from ala_nb.fig_adjust import plot_adjust
STUDY = ROOT/'nbs'/'study'
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
DPI = 60

def check_png(p:Path):
    b = p.read_bytes()
    assert b[:8] == PNG_MAGIC, f"{p}: not a PNG"
    length, kind = struct.unpack('>I4s', b[8:16])
    assert kind == b'IHDR' and length == 13, f"{p}: no IHDR chunk first"
    w, h = struct.unpack('>II', b[16:24])
    assert w > 100 and h > 100, f"{p}: {w}x{h} pixels"
    assert w <= TEXT_WIDTH*DPI + 1, f"{p}: {w} pixels wide at {DPI} dpi, more than {TEXT_WIDTH} in"
    assert zlib.crc32(b[12:29]) == struct.unpack('>I', b[29:33])[0], f"{p}: IHDR checksum"
    assert b.rstrip()[-8:-4] == b'IEND', f"{p}: truncated (no IEND chunk)"

def check_pdf(p:Path):
    b = p.read_bytes()
    assert b[:5] == b'%PDF-', f"{p}: not a PDF"
    assert b.rstrip().endswith(b'%%EOF'), f"{p}: truncated (no %%EOF)"
    assert len(b) > 2000 and b'/Page' in b, f"{p}: no page"
    assert b'/Subtype /Type3' not in b, f"{p}: Type 3 fonts (paper checkers reject them; want pdf.fonttype 42)"
    assert b'/FontFile2' in b, f"{p}: no embedded TrueType font"
    w, h = map(float, re.search(rb'/MediaBox \[ *0 0 ([\d.]+) ([\d.]+)', b).groups())
    assert w <= 72*TEXT_WIDTH, f"{p}: page {w/72:.2f} in wide, more than {TEXT_WIDTH} in"

def check_figures(out:Path, names):
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f'{n}.{e}' for n in names for e in ('pdf', 'png')), written
    for n in names: check_png(out/f'{n}.png'); check_pdf(out/f'{n}.pdf')

@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    "A real run folder: ala_train's tiny preset (seconds on a CPU), the ALA loss with its default DRW."
    d = tmp_path_factory.mktemp('runs')/'ala_tiny'
    r = run('ala_train', '--preset', 'fmnist_lt_tiny', '--loss', 'ala', '--out', d)
    assert r.returncode == 0, r.stderr[-2000:]
    return d

def test_tiny_run(tiny_run, tmp_path):
    r = run('ala_figures', tiny_run, '--out', tmp_path/'figs', '--dpi', DPI)
    assert r.returncode == 0, r.stderr
    check_figures(tmp_path/'figs', ['fig1_per_class', 'fig3_confidence', 'fig4_adjust_ala_drw'])
    assert sorted(Path(l).name for l in r.stdout.split()) == sorted(p.name for p in (tmp_path/'figs').iterdir())

def test_committed_study(tmp_path):
    seeds = {m: len(rs) for m, rs in by_method(load_runs(STUDY)).items()}
    from ala_nb.study import SWEEP_METHODS
    assert sorted(seeds) == sorted(SWEEP_METHODS), seeds      # every method ala_sweep trains, one setting (no '[...]' labels)
    assert set(seeds.values()) == {5}, f"nbs/study: seeds per method {seeds}"
    r = run('ala_figures', STUDY, '--out', tmp_path/'figs', '--dpi', DPI)
    assert r.returncode == 0, r.stderr
    check_figures(tmp_path/'figs', ['fig1_per_class', 'fig3_confidence'] +
                  [f'fig4_adjust_{m}' for m in ('df', 'qf', 'df_ldam', 'ala', 'ala_drw')])

@pytest.mark.parametrize('case', ['missing', 'empty', 'broken_json', 'not_a_dir'])
def test_bad_run_dir(tiny_run, tmp_path, case):
    bad = tmp_path/case
    if case == 'empty': bad.mkdir()
    if case == 'broken_json': bad.mkdir(); (bad/'final.json').write_text('{"top1": ')
    if case == 'not_a_dir': bad.write_text('x')
    r = run('ala_figures', tiny_run, bad, '--out', tmp_path/'figs')
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('ala_figures: error: ') and str(bad) in lines[0], r.stderr
    assert 'Traceback' not in r.stderr

def test_mixed_data_sets(tiny_run, tmp_path):
    "The tiny run (10 classes, 128 -> 4 images) and the study (1280 -> 5) cannot share a per-class figure."
    r = run('ala_figures', tiny_run, STUDY/'ce-seed0', '--out', tmp_path/'figs')
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and 'class counts' in r.stderr, r.stderr

def tick_labels(ax):
    "The x tick labels drawn inside the axes' range."
    ax.figure.canvas.draw()
    lo, hi = ax.get_xlim()
    return [t.get_text() for t, x in zip(ax.get_xticklabels(), ax.get_xticks()) if lo <= x <= hi]

def test_fig4_tiny_run(tiny_run):
    "A 3-epoch run with DRW from its last epoch: integer epochs, every axis labelled, the DRW start marked."
    final = json.loads((tiny_run/'final.json').read_text())
    assert (final['epochs'], final['drw'], final['drw_epoch']) == (3, True, 2), final
    first_drw = [m['epoch'] for m in map(json.loads, (tiny_run/'metrics.jsonl').read_text().splitlines()) if m['drw']][0]
    fig = plot_adjust([tiny_run])
    assert len(fig.axes) == 3 and fig.get_figwidth() <= TEXT_WIDTH
    for ax in fig.axes:
        assert ax.get_ylabel(), f"{ax.get_title()!r}: no y-label"
        assert tick_labels(ax) == ['1', '2', '3'], tick_labels(ax)
        assert [l.get_xdata()[0] for l in ax.lines if l.get_linestyle() == '--'] == [first_drw - 0.5]
    assert 'DRW from epoch 3' in [t.get_text() for t in fig.legends[0].get_texts()]
    plt.close('all')

def test_fig4_ablation_panels():
    "The ablations draw only the factors their loss varies; DF·LDAM's middle panel is LDAM's margin, not QF."
    study = by_method(load_runs(STUDY))
    titles = {m: [ax.get_title() for ax in plot_adjust(study[m]).axes] for m in ('DF', 'QF', 'DF·LDAM', 'ALA+DRW')}
    plt.close('all')
    assert len(titles['DF']) == 1 and not any('QF' in t.split('(')[0] for t in titles['DF']), titles['DF']
    assert len(titles['QF']) == 1 and not any('difficulty' in t for t in titles['QF']), titles['QF']
    assert not any('quantity factor' in t for t in titles['DF·LDAM']) and 'margin' in titles['DF·LDAM'][1], titles['DF·LDAM']
    assert titles['ALA+DRW'] == ['difficulty factor DF', 'quantity factor QF', 'adjusting term A = DF·QF']

def test_fig1_error_bars_and_annotations():
    "Error bars stay within [0, 100] %; the annotations sit above every point and bar and name the baseline."
    fig = plot_per_class(STUDY, pair=('ALA+DRW', 'LDAM-DRW'))
    ax = fig.axes[0]
    ends = np.array([seg[:, 1] for c in ax.containers for seg in c[2][0].get_segments()])
    points = np.concatenate([c[0].get_ydata() for c in ax.containers])
    assert len(ends) == len(points) > 0 and ends.min() >= 0 and ends.max() <= 100, (ends.min(), ends.max())
    notes = [t for t in ax.texts if t.get_text()[:1] in '+−']
    assert len(notes) == 2 and all(t.get_position()[1] > max(ends.max(), points.max()) for t in notes)
    assert any('vs LDAM-DRW' in t.get_text() for t in ax.texts)
    assert fig.get_figwidth() <= TEXT_WIDTH
    plt.close('all')


# --- issue 17: every file checked before anything is drawn; a refused command leaves nothing behind -------------------------
import io, zipfile
from ala_nb.testing import toy_run

def _npz(**arrays)->bytes:
    b = io.BytesIO(); np.savez(b, **arrays); return b.getvalue()

N = 40   # toy_run's test set: 4 classes x 10
GOOD = dict(target=np.repeat(np.arange(4), 10), pred=np.repeat(np.arange(4), 10), p_true=np.full(N, 0.9, np.float32))

@pytest.mark.parametrize('content, says', [
    (b'this is not an npz file', 'not a readable .npz file'),
    (b'PK\x03\x04' + bytes(100), 'not a readable .npz file'),
    (_npz(target=GOOD['target'], pred=GOOD['pred']), "missing arrays ['p_true']"),
    (_npz(**{**GOOD, 'p_true': np.full(N - 1, 0.9, np.float32)}), 'target, pred and p_true must be 1-D arrays of one length'),
    (_npz(**{**GOOD, 'p_true': np.full(N, 1.5, np.float32)}), 'p_true must lie in [0, 1]'),
    (_npz(**{**GOOD, 'target': GOOD['target'] + 3}), 'target must be class ids in [0, 4)'),
    (_npz(**{**GOOD, 'pred': GOOD['pred'].astype(np.float64) + 0.5}), 'pred must be class ids in [0, 4)'),
    (_npz(**{**GOOD, 'target': np.array(['a'] * N)}), 'target must be class ids in [0, 4)'),
], ids=['text', 'zip_header', 'no_p_true', 'lengths', 'p_true_range', 'target_range', 'pred_float', 'target_str'])
def test_bad_outputs_are_refused_before_drawing(tmp_path, content, says):
    "A damaged test_outputs.npz in the last run: one line naming it, exit 2, and no figure (not even the earlier ones)."
    toy_run(tmp_path/'runs'/'ce', [0.9, 0.6, 0.3, 0.2], loss='ce')
    bad = toy_run(tmp_path/'runs'/'ala', [0.9, 0.6, 0.3, 0.5])/'test_outputs.npz'
    bad.write_bytes(content)
    r = run('ala_figures', tmp_path/'runs', '--out', tmp_path/'figs', '--dpi', DPI)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(f'ala_figures: error: {bad}: ') and says in lines[0], r.stderr
    assert r.stdout == '' and not (tmp_path/'figs').exists()

@pytest.mark.parametrize('dpi', [0, -3, 5000])
def test_bad_dpi_creates_nothing(tmp_path, dpi):
    toy_run(tmp_path/'ala', [0.9, 0.6, 0.3, 0.5])
    r = run('ala_figures', tmp_path/'ala', '--out', tmp_path/'figs', '--dpi', dpi)
    assert r.returncode == 2 and r.stderr.splitlines() == [f'ala_figures: error: --dpi must be an integer from 1 to 1200, got {dpi}'], r.stderr
    assert not (tmp_path/'figs').exists()

def test_failure_while_drawing_leaves_an_existing_folder_as_it_was(tmp_path):
    "Figures are drawn aside and moved in only when all are drawn: a failure keeps the folder's earlier files, adds none."
    toy_run(tmp_path/'ala', [0.9, 0.6, 0.3, 0.5])
    out = tmp_path/'figs'; out.mkdir(); (out/'notes.txt').write_text('mine')
    from ala_nb import figures
    calls = []
    def boom(*a, **k): calls.append(1); raise ValueError('drawing failed')
    orig = figures.plot_adjust
    figures.plot_adjust = boom
    try:
        with pytest.raises(ValueError, match='drawing failed'): figures.draw_figures([tmp_path/'ala'], out, dpi=DPI)
    finally: figures.plot_adjust = orig
    assert calls and sorted(p.name for p in tmp_path.iterdir()) == ['ala', 'figs'] and os.listdir(out) == ['notes.txt']
    paths = figures.draw_figures([tmp_path/'ala'], out, dpi=DPI)
    assert sorted(os.listdir(out)) == sorted(['notes.txt'] + [p.name for p in paths]) and len(paths) == 6
