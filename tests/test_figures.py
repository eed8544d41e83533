"""`ala_figures` on real run folders: a tiny run trained here with `ala_train`, and the committed study in nbs/study."""
import struct, zlib
from pathlib import Path
import pytest

from clitools import ROOT, run
STUDY = ROOT/'nbs'/'study'
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'

def check_png(p:Path):
    b = p.read_bytes()
    assert b[:8] == PNG_MAGIC, f"{p}: not a PNG"
    length, kind = struct.unpack('>I4s', b[8:16])
    assert kind == b'IHDR' and length == 13, f"{p}: no IHDR chunk first"
    w, h = struct.unpack('>II', b[16:24])
    assert w > 100 and h > 100, f"{p}: {w}x{h} pixels"
    assert zlib.crc32(b[12:29]) == struct.unpack('>I', b[29:33])[0], f"{p}: IHDR checksum"
    assert b.rstrip()[-8:-4] == b'IEND', f"{p}: truncated (no IEND chunk)"

def check_pdf(p:Path):
    b = p.read_bytes()
    assert b[:5] == b'%PDF-', f"{p}: not a PDF"
    assert b.rstrip().endswith(b'%%EOF'), f"{p}: truncated (no %%EOF)"
    assert len(b) > 2000 and b'/Page' in b, f"{p}: no page"

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
    r = run('ala_figures', tiny_run, '--out', tmp_path/'figs', '--dpi', 60)
    assert r.returncode == 0, r.stderr
    check_figures(tmp_path/'figs', ['fig1_per_class', 'fig3_confidence', 'fig4_adjust_ala_drw'])
    assert sorted(Path(l).name for l in r.stdout.split()) == sorted(p.name for p in (tmp_path/'figs').iterdir())

def test_committed_study(tmp_path):
    runs = sorted(p.parent.name for p in STUDY.glob('*/final.json'))
    assert len(runs) == 21, f"nbs/study holds {len(runs)} runs, expected 7 methods x 3 seeds"
    r = run('ala_figures', STUDY, '--out', tmp_path/'figs', '--dpi', 50)
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
