"`ala_table` from the shell on run folders and ala_eval outputs with known numbers: Markdown (percent), CSV and JSON (fractions) equal an independent numpy computation; runs of different settings are never pooled; bad input is one line."
import csv, io, json, re
from pathlib import Path
import numpy as np, pytest

from clitools import run
from ala_nb.testing import toy_run

T975 = {1: 12.706204736174694, 2: 4.302652729749462}          # SciPy's stats.t.ppf(0.975, df)
GROUPS = ('all', 'many', 'medium', 'few')
IDX = dict(all=[0, 1, 2, 3], many=[0], medium=[1], few=[2, 3])  # toy_run's counts (200, 50, 10, 5): many > 100, few < 20
CE = {0: [0.9, 0.6, 0.3, 0.1], 1: [0.8, 0.6, 0.4, 0.2], 2: [0.9, 0.5, 0.3, 0.0]}
ALA = {0: [0.9, 0.7, 0.5, 0.3], 1: [0.9, 0.6, 0.5, 0.4], 2: [0.8, 0.7, 0.6, 0.2]}
LDAM = {1: [0.8, 0.7, 0.5, 0.3], 3: [0.7, 0.6, 0.5, 0.5]}       # shares only seed 1 with CE

def ala_table(*args): return run('ala_table', *args, timeout=120)

def top1(pc, g): return float(np.mean([pc[k] for k in IDX[g]]))

def summary(runs:dict)->dict: # group -> (mean, std) in percent over seeds
    return {g: (100 * np.mean([top1(pc, g) for pc in runs.values()]), 100 * np.std([top1(pc, g) for pc in runs.values()], ddof=1))
            for g in GROUPS}

def paired(runs:dict, base:dict)->dict: # group -> (mean, lo, hi) of the per-seed differences in points
    seeds = sorted(set(runs) & set(base))
    out = {}
    for g in GROUPS:
        d = 100 * np.array([top1(runs[s], g) - top1(base[s], g) for s in seeds])
        h = T975[len(d) - 1] * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else None
        out[g] = (d.mean(), None if h is None else d.mean() - h, None if h is None else d.mean() + h)
    return out

@pytest.fixture(scope='module')
def study(tmp_path_factory):
    d = tmp_path_factory.mktemp('study')
    for s, pc in CE.items(): toy_run(d/f'ce-seed{s}', pc, loss='ce', seed=s)
    for s, pc in ALA.items(): toy_run(d/f'ala-seed{s}', pc, loss='ala', seed=s)
    for s, pc in LDAM.items(): toy_run(d/f'ldam_drw-seed{s}', pc, loss='ldam', drw=True, seed=s)
    return d

def test_json_equals_numpy(study):
    p = ala_table(study, '--json', '--baseline', 'CE')
    assert p.returncode == 0 and p.stderr == '', p.stderr
    j = json.loads(p.stdout)
    assert (j['unit'], j['baseline'], j['groups']) == ('fraction', 'CE', list(GROUPS))
    rows = {r['method']: r for r in j['summary']}
    assert list(rows) == ['CE', 'LDAM-DRW', 'ALA']
    for m, runs in (('CE', CE), ('ALA', ALA), ('LDAM-DRW', LDAM)):
        assert (rows[m]['n'], rows[m]['seeds']) == (len(runs), sorted(runs))
        for g, (mean, std) in summary(runs).items():
            assert 100 * rows[m][g]['mean'] == pytest.approx(mean, abs=1e-9) and 100 * rows[m][g]['std'] == pytest.approx(std, abs=1e-9)
    pr = {r['method']: r for r in j['paired']}
    assert sorted(pr) == ['ALA', 'LDAM-DRW'] and (pr['ALA']['seeds'], pr['LDAM-DRW']['seeds']) == ([0, 1, 2], [1])
    for m, runs in (('ALA', ALA), ('LDAM-DRW', LDAM)):
        for g, (mean, lo, hi) in paired(runs, CE).items():
            v = pr[m][g]
            assert 100 * v['mean'] == pytest.approx(mean, abs=1e-9)
            assert (v['lo'], v['hi']) == ((None, None) if lo is None else (pytest.approx(lo / 100, abs=1e-10), pytest.approx(hi / 100, abs=1e-10)))
            assert v['verdict'] == ('n/a' if lo is None else 'better' if lo > 0 else 'worse' if hi < 0 else 'within noise')

def test_csv_equals_numpy(study):
    p = ala_table(study, '--csv', '--baseline', 'CE')
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader(io.StringIO(p.stdout)))
    assert list(rows[0]) == ['table', 'method', 'baseline', 'n', 'seeds', 'group', 'mean', 'std', 'ci95_low', 'ci95_high', 'verdict']
    assert len(rows) == 4 * (3 + 2)
    got = {(r['table'], r['method'], r['group']): r for r in rows}
    for m, runs in (('CE', CE), ('ALA', ALA), ('LDAM-DRW', LDAM)):
        for g, (mean, std) in summary(runs).items():
            r = got['summary', m, g]
            assert (100 * float(r['mean']), 100 * float(r['std'])) == (pytest.approx(mean, abs=1e-9), pytest.approx(std, abs=1e-9))
            assert (r['n'], r['seeds'], r['ci95_low']) == (str(len(runs)), ' '.join(map(str, sorted(runs))), '')
    for m, runs in (('ALA', ALA), ('LDAM-DRW', LDAM)):
        for g, (mean, lo, hi) in paired(runs, CE).items():
            r = got['paired', m, g]
            assert r['baseline'] == 'CE' and 100 * float(r['mean']) == pytest.approx(mean, abs=1e-9)
            if lo is None: assert (r['std'], r['ci95_low'], r['ci95_high']) == ('', '', '')
            else: assert (100 * float(r['ci95_low']), 100 * float(r['ci95_high'])) == (pytest.approx(lo, abs=1e-8), pytest.approx(hi, abs=1e-8))

def test_markdown_equals_numpy(study):
    p = ala_table(study, '--baseline', 'CE')
    assert p.returncode == 0, p.stderr
    assert p.stdout == ala_table(study, '--markdown', '--baseline', 'CE').stdout
    lines = {l.split('|')[1].strip(): [c.strip() for c in l.strip().strip('|').split('|')] for l in p.stdout.splitlines() if l.startswith('| ')}
    for m, runs in (('CE', CE), ('ALA', ALA), ('LDAM-DRW', LDAM)):
        assert lines[m][1:] == [str(len(runs))] + [f"{mean:.1f} ± {std:.1f}" for mean, std in summary(runs).values()]
    for m, runs in (('ALA', ALA), ('LDAM-DRW', LDAM)):
        cells = [f"{mean:+.1f}" + (' (1 seed)' if lo is None else f" [{lo:+.1f}, {hi:+.1f}] " + ('better' if lo > 0 else 'worse' if hi < 0 else 'within noise'))
                 for mean, lo, hi in paired(runs, CE).values()]
        assert lines[f'{m} − CE'][1:] == [str(len(set(runs) & set(CE)))] + cells

def test_default_baseline_is_the_studys(study):
    j = json.loads(ala_table(study, '--json').stdout)
    assert j['baseline'] == 'LDAM-DRW' and [r['method'] for r in j['paired']] == ['CE', 'ALA']
    for r, runs in zip(j['paired'], (CE, ALA)):
        assert r['seeds'] == [1] and 100 * r['all']['mean'] == pytest.approx(paired(runs, LDAM)['all'][0], abs=1e-9)

def test_settings_are_never_pooled(study, tmp_path):
    "CE of another data profile, and CE and ALA of 5 epochs: each setting its own rows, pairs only within a setting."
    other = {0: [0.2, 0.2, 0.2, 0.2], 1: [0.4, 0.4, 0.4, 0.4]}
    for s, pc in other.items(): toy_run(tmp_path/'profile'/f'ce-seed{s}', pc, loss='ce', seed=s, counts=(300, 50, 10, 5))
    for s in (0, 1):
        toy_run(tmp_path/'long'/f'ce-seed{s}', [0.5] * 4, loss='ce', seed=s, epochs=5)
        toy_run(tmp_path/'long'/f'ala-seed{s}', [0.6] * 4, loss='ala', seed=s, epochs=5)
    p = ala_table(study, tmp_path/'profile', tmp_path/'long', '--json', '--baseline', 'CE')
    assert p.returncode == 0, p.stderr
    j = json.loads(p.stdout)
    rows = {r['method']: r for r in j['summary']}
    ce = [m for m in rows if m.startswith('CE [')]
    assert len(ce) == 3 and len(rows) == 6, list(rows)                  # CE in three settings, ALA in two, LDAM-DRW in one
    profile = [m for m in ce if 'profile=300→5' in m]
    long = [m for m in ce if 'epochs=5' in m]
    three = [m for m in ce if m not in profile + long]
    assert len(profile) == len(long) == len(three) == 1, ce
    three, profile, long = three[0], profile[0], long[0]
    for m, runs in ((three, CE), (profile, other), (long, {0: [0.5] * 4, 1: [0.5] * 4})):
        for g, (mean, std) in summary(runs).items():
            assert 100 * rows[m][g]['mean'] == pytest.approx(mean, abs=1e-9) and 100 * rows[m][g]['std'] == pytest.approx(std, abs=1e-9), (m, g)
    for r in j['paired']:
        assert r['method'][r['method'].index(' ['):] == r['baseline'][r['baseline'].index(' ['):], r   # same setting
    long_ala = next(r for r in j['paired'] if r['method'].startswith('ALA [') and 'epochs=5' in r['method'])
    assert long_ala['all']['mean'] == pytest.approx(0.1, abs=1e-11) and long_ala['all']['std'] == pytest.approx(0.0, abs=1e-11)
    md = ala_table(study, tmp_path/'long').stdout
    assert re.search(r'^\| CE \[.*epochs=5.*\] \| 2 \| 50\.0 ± 0\.0 \|', md, re.M), md

def test_one_folder_counts_once(study):
    a = json.loads(ala_table(study, '--json').stdout)
    b = json.loads(ala_table(study, study/'ce-seed0', study/'ala-seed1', '--json').stdout)
    assert a['summary'] == b['summary'] and a['paired'] == b['paired']

@pytest.mark.parametrize('args, says', [
    (('{d}/nope',), 'nope: no such run folder'),
    (('{d}/empty',), 'empty: no run folders in it'),
    (('{study}', '{d}/training'), 'training: not a finished run folder: final.json missing (still training, or stopped'),
    (('{study}', '{d}/copy'), 'two runs of CE with seed 1 in one setting'),
    (('{study}', '--csv', '--json'), 'give one of --markdown, --csv, --json'),
    (('{study}', '--baseline', 'Focal'), "--baseline 'Focal': no such method among the runs; choose from CE, LDAM-DRW, ALA"),
    (('{study}', '--baseline', 'nope'), "--baseline 'nope': no such method among the runs; choose from CE, LDAM-DRW, ALA"),
    (('{study}', '{d}/nope.json'), 'nope.json: no such file'),
    (('{study}', '{d}/notjson.json'), 'notjson.json: invalid JSON'),
    (('{study}', '{study}/ce-seed0/final.json'), "not an ala_eval output: missing keys"),
    (('{study}', '{d}/plain.json'), 'two runs of CE with seed 1 in one setting'),
])
def test_bad_input_is_one_line(study, tmp_path, args, says):
    (tmp_path/'empty').mkdir()
    (tmp_path/'training').mkdir(); (tmp_path/'training'/'config.json').write_text('{}')   # a run folder without final.json
    toy_run(tmp_path/'copy', CE[1], loss='ce', seed=1)
    (tmp_path/'notjson.json').write_text('{"top1": ')
    eval_file(tmp_path/'plain.json', study/'ce-seed1', CE[1])     # a plain re-evaluation given beside its own run
    p = ala_table(*[a.format(d=tmp_path, study=study) for a in args])
    assert p.returncode == 2 and p.stdout == '', (p.returncode, p.stdout)
    assert p.stderr.count('\n') == 1 and p.stderr.startswith('ala_table: error: ') and says in p.stderr, p.stderr


# --- issue 17 ---------------------------------------------------------------------------------------------------------------
from clitools import run_closed_stdout

@pytest.mark.parametrize('fmt', ['--markdown', '--csv', '--json'])
def test_closed_pipe_is_quiet(study, fmt):
    "`ala_table runs/ | head -1`: no BrokenPipeError traceback; exit 141 (128 + SIGPIPE), as the shell reports `yes | head -1`."
    assert run_closed_stdout('ala_table', study, fmt) == (141, '')

def test_same_value_same_setting(tmp_path):
    "imb_factor 32 (a preset's) and 32.0 (`--imb_factor 32`) are one setting: pooled over seeds, no setting suffix."
    for s, v in ((0, 32), (1, 32.0)):
        d = toy_run(tmp_path/f'ce-seed{s}', CE[s], loss='ce', seed=s)
        c = json.loads((d/'config.json').read_text()); c['imb_factor'] = v; (d/'config.json').write_text(json.dumps(c))
    j = json.loads(ala_table(tmp_path, '--json').stdout)
    assert [(r['method'], r['n'], r['seeds']) for r in j['summary']] == [('CE', 2, [0, 1])], j['summary']

@pytest.mark.parametrize('field, value, says', [
    ('top1', [0.5], "top1: expected an object of shot groups"),
    ('top1', {'all': 'high', 'many': 0.5, 'medium': 0.5, 'few': 0.5}, "top1.all: expected a number in [0, 1] or null, got 'high'"),
    ('per_class', 'abc', 'per_class: expected a list of numbers in [0, 1] or null'),
    ('per_class', [0.5, 0.5, '0.5', 0.5], 'per_class: expected a list of numbers in [0, 1] or null'),
    ('counts', [200, 50, 10], 'counts: expected a list of positive integers, one per class (4 in per_class)'),
    ('counts', [200, 50, 10.5, 5], 'counts: expected a list of positive integers'),
    ('seed', '0', "seed: expected an integer, got '0'"),
    ('seed', True, 'seed: expected an integer, got true'),
    ('loss', 7, 'loss: expected a loss name, got 7'),
    ('drw', 'yes', "drw: expected true or false, got 'yes'"),
    ('groups', {'many': [0], 'medium': 'x', 'few': [2, 3]}, 'groups.medium: expected a list of class ids in [0, 4)'),
    ('groups', {'many': [0], 'medium': [1], 'few': [2, 9]}, 'groups.few: expected a list of class ids in [0, 4)'),
])
def test_final_json_wrong_types_are_one_line(tmp_path, field, value, says):
    d = toy_run(tmp_path/'ce-seed0', CE[0], loss='ce', seed=0)
    f = json.loads((d/'final.json').read_text()); f[field] = value; (d/'final.json').write_text(json.dumps(f))
    p = ala_table(tmp_path)
    assert p.returncode == 2 and p.stdout == '', (p.returncode, p.stdout, p.stderr)
    assert p.stderr.count('\n') == 1 and p.stderr.startswith(f"ala_table: error: {d/'final.json'}: {says}"), p.stderr


# --- issue 20: --baseline by name or label, ala_eval outputs as rows, percent for people and fractions for programs ----------
LA = {0: [0.8, 0.7, 0.5, 0.4], 1: [0.7, 0.7, 0.5, 0.5], 2: [0.8, 0.6, 0.4, 0.3]}   # CE's seeds re-scored with post-hoc LA
TN = {0: [0.7, 0.7, 0.6, 0.5], 2: [0.8, 0.6, 0.5, 0.4]}                            # and with tau-normalisation

def eval_file(path, folder, pc, **kw):
    "The object `ala_eval --json --out` writes for a toy run, re-scored as `per_class` (top-1 as the mean over groups)."
    f = json.loads((Path(folder)/'final.json').read_text())
    e = dict(run=str(folder), checkpoint='checkpoint.pt', epoch=f['epochs'], step=None, split='test', n=40, tau_la=None,
             tau_norm=None, per_class=list(pc), counts=f['counts'], groups=f['groups'], classes=f['classes'],
             preset=f['preset'], dataset=f.get('dataset'), arch=f.get('arch'), loss=f['loss'], drw=f['drw'], seed=f['seed'],
             epochs=f['epochs'], device='cpu', amp='off', batch_size=8, world_size=1, wall_s=0.1)
    e['top1'] = {g: top1(pc, g) for g in GROUPS}
    e.update(kw)
    Path(path).write_text(json.dumps(e))
    return Path(path)

@pytest.fixture(scope='module')
def evals(study, tmp_path_factory):
    d = tmp_path_factory.mktemp('evals')
    for s, pc in LA.items(): eval_file(d/f'ce_la1-seed{s}.json', study/f'ce-seed{s}', pc, tau_la=1)
    for s, pc in TN.items(): eval_file(d/f'ce_tn05-seed{s}.json', study/f'ce-seed{s}', pc, tau_norm=0.5)
    return d

@pytest.mark.parametrize('typed, label', [('ce', 'CE'), ('CE', 'CE'), ('Ce', 'CE'), ('ldam', 'LDAM-DRW'),
                                          ('LDAM-DRW', 'LDAM-DRW'), ('ldam-drw', 'LDAM-DRW'), ('ldam_drw', 'LDAM-DRW'), ('ALA', 'ALA')])
def test_baseline_by_name_or_label(study, typed, label):
    p = ala_table(study, '--json', '--baseline', typed)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)['baseline'] == label

def test_baseline_ala_drw(tmp_path):
    "`ala_drw` and `ALA+DRW` name the DRW runs; `ala` (the name, DRW by default, and the label ALA) is refused when both exist."
    for s in (0, 1):
        toy_run(tmp_path/f'ala_drw-seed{s}', ALA[s], loss='ala', drw=True, seed=s)
        toy_run(tmp_path/f'ala-seed{s}', CE[s], loss='ala', drw=False, seed=s)
    for typed in ('ala_drw', 'ALA+DRW', 'ala+drw'):
        j = json.loads(ala_table(tmp_path, '--json', '--baseline', typed).stdout)
        assert j['baseline'] == 'ALA+DRW' and [r['method'] for r in j['paired']] == ['ALA']
        assert 100 * j['paired'][0]['all']['mean'] == pytest.approx(paired({s: CE[s] for s in (0, 1)}, {s: ALA[s] for s in (0, 1)})['all'][0], abs=1e-9)
    p = ala_table(tmp_path, '--baseline', 'ala')
    assert p.returncode == 2 and p.stderr == "ala_table: error: --baseline 'ala' could be ALA or ALA+DRW among the runs; give one of those labels\n", p.stderr

def test_eval_rows_equal_the_files(study, evals):
    "Each ala_eval file is a row of its rule; its numbers are the files' fractions (JSON, CSV) and ×100 (Markdown), paired with CE's run folders."
    j = json.loads(ala_table(study, evals, '--json', '--baseline', 'ce').stdout)
    rows = {r['method']: r for r in j['summary']}
    assert list(rows) == ['CE', 'LDAM-DRW', 'ALA', 'CE + post-hoc LA τ=1', 'CE + τ-norm τ=0.5'], list(rows)
    assert (rows['CE + post-hoc LA τ=1']['rule'], rows['CE + post-hoc LA τ=1']['seeds'], rows['CE + τ-norm τ=0.5']['seeds']) == (' + post-hoc LA τ=1', [0, 1, 2], [0, 2])
    files = {m: [json.loads(f.read_text()) for f in sorted(evals.glob(pat))] for m, pat in
             (('CE + post-hoc LA τ=1', 'ce_la1-*'), ('CE + τ-norm τ=0.5', 'ce_tn05-*'))}
    for m, fs in files.items():
        for g in GROUPS:
            v = np.array([f['top1'][g] for f in fs])
            assert rows[m][g]['mean'] == pytest.approx(v.mean(), abs=1e-12) and rows[m][g]['std'] == pytest.approx(v.std(ddof=1), abs=1e-12)
    pr = {r['method']: r for r in j['paired']}
    for m, runs in (('CE + post-hoc LA τ=1', LA), ('CE + τ-norm τ=0.5', TN)):
        assert pr[m]['baseline'] == 'CE' and pr[m]['seeds'] == sorted(runs)
        for g, (mean, lo, hi) in paired(runs, CE).items():
            assert 100 * pr[m][g]['mean'] == pytest.approx(mean, abs=1e-9)
            assert (100 * pr[m][g]['lo'], 100 * pr[m][g]['hi']) == (pytest.approx(lo, abs=1e-8), pytest.approx(hi, abs=1e-8))
    md = ala_table(study, evals, '--baseline', 'ce').stdout
    cells = {l.split('|')[1].strip(): [c.strip() for c in l.strip().strip('|').split('|')] for l in md.splitlines() if l.startswith('| ')}
    for m, fs in files.items():
        want = [f"{100 * np.mean([f['top1'][g] for f in fs]):.1f} ± {100 * np.std([f['top1'][g] for f in fs], ddof=1):.1f}" for g in GROUPS]
        assert cells[m][2:] == want, (m, cells[m])
    rows_csv = {(r['table'], r['method'], r['group']): r for r in csv.DictReader(io.StringIO(ala_table(study, evals, '--csv', '--baseline', 'ce').stdout))}
    f = files['CE + post-hoc LA τ=1']
    assert float(rows_csv['summary', 'CE + post-hoc LA τ=1', 'few']['mean']) == pytest.approx(np.mean([x['top1']['few'] for x in f]), abs=1e-12)

def test_eval_files_alone(study, evals):
    "Eval files without any run folder: they pool and pair among themselves (the rules are different rows)."
    p = ala_table(*sorted(evals.glob('*.json')), '--json', '--baseline', 'ce + post-hoc la τ=1')
    assert p.returncode == 0, p.stderr
    j = json.loads(p.stdout)
    assert [r['method'] for r in j['summary']] == ['CE + post-hoc LA τ=1', 'CE + τ-norm τ=0.5']
    assert j['paired'][0]['seeds'] == [0, 2]
    assert 100 * j['paired'][0]['all']['mean'] == pytest.approx(paired(TN, LA)['all'][0], abs=1e-9)

@pytest.mark.parametrize('change, says', [
    (dict(top1={'all': 0.6, 'many': 0.8, 'medium': 0.6, 'few': 0.3}), 'top1.all: expected the mean of per_class over all classes (0.55)'),
    (dict(top1={'all': 0.55, 'many': 0.8, 'medium': 0.6}), 'top1: expected an object with keys all, many, medium, few'),
    (dict(groups={'many': [0, 1], 'medium': [], 'few': [2, 3]}), 'groups.many: expected the many-shot classes of counts [0]'),
    (dict(groups={'many': [0], 'medium': [1]}), 'groups: expected an object with keys many, medium, few'),
    (dict(per_class=[0.8, 0.6, 0.3]), 'counts: expected a list of positive integers, one per class (3 in per_class)'),
    (dict(per_class=[0.8, 0.6, 0.3, 1.5]), 'per_class: expected a list of numbers in [0, 1] or null'),
    (dict(tau_la=-1), 'tau_la: expected a number >= 0 or null, got -1'),
    (dict(tau_norm='0.5'), "tau_norm: expected a number >= 0 or null, got '0.5'"),
    (dict(split='train'), "split: expected 'test' or 'val', got 'train'"),
    (dict(epoch=2.0), 'epoch: expected an integer >= 0, got 2.0'),
    (dict(seed=2), "seed: 2, but its run folder"),
    (dict(loss='ala'), "loss: \"ala\", but its run folder"),
    (dict(classes=['a']), 'classes: expected a list of 4 class names'),
    (dict(config=[1]), "config: expected the run's config object"),
    (dict(checkpoint=None), 'checkpoint: expected a path, got null'),
])
def test_eval_json_wrong_is_one_line(study, tmp_path, change, says):
    f = eval_file(tmp_path/'e.json', study/'ce-seed0', [0.8, 0.6, 0.3, 0.5], **{'tau_la': 1, **change})
    p = ala_table(study, f)
    assert p.returncode == 2 and p.stdout == '', (p.returncode, p.stdout, p.stderr)
    assert p.stderr.count('\n') == 1 and p.stderr.startswith(f"ala_table: error: {f}: {says}"), p.stderr

def test_eval_json_missing_key_is_one_line(study, tmp_path):
    f = eval_file(tmp_path/'e.json', study/'ce-seed0', CE[0])
    e = json.loads(f.read_text()); del e['tau_norm']; f.write_text(json.dumps(e))
    p = ala_table(f)
    assert p.returncode == 2 and p.stderr == f"ala_table: error: {f}: not an ala_eval output: missing keys ['tau_norm'] (expected what ala_eval --json writes)\n"

def test_help_says_percent_and_fractions():
    h = ala_table('--help').stdout
    assert 'Markdown tables, top-1 in percent' in h and 'top-1 as fractions' in h and 'ala_eval' in h
