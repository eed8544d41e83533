"""The logs of a real tiny run, read back as their users read them: TensorBoard's step points (loss and lr every
`log_every` steps) against metrics.jsonl and the schedule, the hyperparameters with the final top-1, metrics.csv
against metrics.jsonl; and after a resume that falls back to an older checkpoint, no point and no row twice."""
import csv, json, math
from pathlib import Path
import pytest

from clitools import run
TINY = ['--preset', 'fmnist_lt_tiny', '--device', 'cpu', '--progress-every', '0']

def scalars(folder) -> dict:
    "tag -> [(x, value)] of the TensorBoard run in `folder` (its own events only, as TensorBoard shows them)."
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(folder)); ea.Reload()
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()['scalars']}

def jsonl(out): return [json.loads(l) for l in (Path(out)/'metrics.jsonl').read_text().splitlines()]

def csv_rows(out): return list(csv.DictReader(open(Path(out)/'metrics.csv', newline='')))

def train(out, *args):
    p = run('ala_train', *TINY, '--out', out, '--tensorboard', *args)
    assert p.returncode == 0, p.stderr
    return p

@pytest.fixture(scope='module')
def logged(tmp_path_factory):
    out = tmp_path_factory.mktemp('logs')/'tiny'
    train(out)
    return out

def test_step_points_are_the_loops_numbers(logged):
    from ala_nb.config import get_config
    from ala_nb.step import lr_factor
    cfg = get_config('fmnist_lt_tiny')
    f = json.loads((logged/'final.json').read_text())
    N = sum(f['counts'])
    steps = math.ceil(N / cfg.batch_size)                          # the last batch is partial (388 = 12 * 32 + 4)
    samples = lambda a, b: min(b * cfg.batch_size, N) - a * cfg.batch_size   # samples of the epoch's steps a+1..b
    at = [s for s in range(cfg.log_every, steps + 1, cfg.log_every)]
    at += [steps] if steps % cfg.log_every else []                 # the epoch's end, if not a sync already
    sc = scalars(logged/'tb'/'steps')
    assert set(sc) == {'step/loss', 'step/lr'}
    xs = [x for x, _ in sc['step/loss']]
    assert xs == [e * steps + s for e in range(cfg.epochs) for s in at] == [x for x, _ in sc['step/lr']]
    assert len(xs) == cfg.epochs * math.ceil(steps / cfg.log_every)
    for e, rec in enumerate(jsonl(logged)):                       # a point: the mean loss of the samples since the last
        pts = [(x - e * steps, v) for x, v in sc['step/loss'] if e * steps < x <= (e + 1) * steps]
        ends = [s for s, _ in pts]
        w = [samples(a, b) for a, b in zip([0] + ends[:-1], ends)]
        assert sum(w) == N
        assert sum(wi * v for wi, (_, v) in zip(w, pts)) / N == pytest.approx(rec['train_loss'], rel=1e-6)
        assert rec['lr'] == pytest.approx(sc['step/lr'][(e + 1) * len(at) - 1][1], rel=1e-6)
    want = [cfg.lr * lr_factor(cfg, (x - 1) // steps, (x - 1) % steps, steps) for x in xs]
    assert [v for _, v in sc['step/lr']] == pytest.approx(want, rel=1e-6)
    assert len(set(round(v, 6) for _, v in sc['step/lr'])) >= 3    # warm-up, the plateau and the step down: not a constant

def test_epoch_points_hparams_and_final(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    m, f = jsonl(logged), json.loads((logged/'final.json').read_text())
    sc = scalars(logged/'tb')
    assert sc['top1/all'] == [(r['epoch'], pytest.approx(r['top1']['all'], abs=1e-7)) for r in m]   # per epoch, as before
    assert [x for x, _ in sc['train/loss']] == [1, 2, 3] and 'step/loss' not in sc
    for g in ('all', 'many', 'medium', 'few'):                    # fractions, like final.json
        assert sc[f'final/top1_{g}'] == [(4, pytest.approx(f['top1'][g], abs=1e-7))]
    ea = EventAccumulator(str(logged/'tb')); ea.Reload()
    c = ea.PluginTagToContent('hparams')
    hp = plugin_data_pb2.HParamsPluginData.FromString(c['_hparams_/session_start_info']).session_start_info.hparams
    assert (hp['loss'].string_value, hp['lr'].number_value, hp['epochs'].number_value, hp['drw'].number_value) == ('ala', .05, 3, 1)
    assert 'out' not in hp and 'device' not in hp
    exp = plugin_data_pb2.HParamsPluginData.FromString(c['_hparams_/experiment']).experiment
    assert sorted(mi.name.tag for mi in exp.metric_infos) == sorted(f'final/top1_{g}' for g in ('all', 'many', 'medium', 'few'))

def test_metrics_csv_is_metrics_jsonl(logged):
    m, rows = jsonl(logged), csv_rows(logged)
    want = ['epoch', 'train_loss', 'lr', 'top1_all', 'top1_many', 'top1_medium', 'top1_few', 'drw', 'wall_s']
    assert [c for c in rows[0] if c in want] == want and not any(c.startswith('per_class') for c in rows[0])
    assert len(rows) == len(m) == 3
    for r, j in zip(rows, m):                                     # every column is the JSON's value, to the bit
        flat = {k: v for k, v in j.items() if not isinstance(v, (dict, list))}
        flat.update({f'{k}_{g}': v for k, d in j.items() if isinstance(d, dict) for g, v in d.items() if not isinstance(v, (dict, list))})
        assert set(r) >= set(flat)
        for k, v in flat.items():
            got = r[k]
            assert (got == '' if v is None else got == str(v) if isinstance(v, (bool, str)) else float(got) == v), (k, got, v)

def test_resume_from_an_older_checkpoint_doubles_nothing(logged, tmp_path):
    "A finished run whose last checkpoint is torn resumes from the one before: epoch 3, its steps and the final points are redone."
    out = tmp_path/'run'
    train(out)
    c = out/'checkpoint.pt'
    c.write_bytes(c.read_bytes()[:c.stat().st_size // 2])
    p = train(out, '--resume')
    assert 'falling back to' in p.stdout and 'at epoch 3' in p.stdout
    for sub in ('tb', 'tb/steps'):                                # two launches' events, read as TensorBoard reads them
        assert len(list((out/sub).glob('events.out.tfevents.*'))) == 2
        a, b = scalars(out/sub), scalars(logged/sub)
        assert a.keys() == b.keys()
        for t in a:                                               # every point once, equal to an uninterrupted run's
            assert [x for x, _ in a[t]] == [x for x, _ in b[t]], t
            assert [v for _, v in a[t]] == pytest.approx([v for _, v in b[t]], rel=1e-6), t
    assert [r['epoch'] for r in csv_rows(out)] == ['1', '2', '3'] and [r['epoch'] for r in jsonl(out)] == [1, 2, 3]
    assert [r['top1_all'] for r in csv_rows(out)] == [r['top1_all'] for r in csv_rows(logged)]
