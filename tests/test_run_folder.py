"""Runs you can trust: every way a command used to give a silently wrong result, or a traceback, on a run folder.
Each test runs the real `ala_train` as a user would (see nbs/04_runs and nbs/04d_train for the pieces)."""
import contextlib, hashlib, json, os, shutil, signal, socket, subprocess, sys, time
from pathlib import Path
import numpy as np, pytest, torch
from PIL import Image

from clitools import ROOT, ENV, run, start, script, delay

TINY = ['--preset', 'fmnist_lt_tiny', '--device', 'cpu']

def cli(*args, timeout=300, env=None):
    return subprocess.run([sys.executable, script('ala_train'), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env or ENV)

def one_error(p, code=2):
    "The process failed with `code` and exactly one 'ala_train: error:' line on stderr, no traceback; that line."
    lines = p.stderr.strip().splitlines()
    assert p.returncode == code, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith('ala_train: error: '), p.stderr[-3000:]
    assert 'Traceback' not in p.stderr
    return lines[0]

def snapshot(folder):
    "Every file below `folder` with its bytes' digest (what 'the folder did not change' means)."
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob('*')) if p.is_file()}

def ckpt(out): return torch.load(Path(out)/'checkpoint.pt', weights_only=True)

def final(out): return json.loads((Path(out)/'final.json').read_text())

def metrics(out): return [{k: v for k, v in json.loads(l).items() if k != 'wall_s'} for l in (Path(out)/'metrics.jsonl').read_text().splitlines()]

def wait_for(cond, proc=None, timeout=240):
    t = time.time()
    while time.time() - t < timeout:
        if proc is not None: assert proc.poll() is None, 'the run ended too early'
        try:
            if cond(): return
        except Exception: pass
        time.sleep(0.05)
    raise TimeoutError

@pytest.fixture(scope='module')
def finished(tmp_path_factory):
    "A finished 2-epoch tiny run (ce, lr 0.02), made once."
    out = tmp_path_factory.mktemp('fin')/'run'
    p = cli(*TINY, '--loss', 'ce', '--lr', '0.02', '--epochs', '2', '--out', out)
    assert p.returncode == 0, p.stderr
    return out

def copy(src, dst): shutil.copytree(src, dst); return dst


# ------------------------------------------------------------------------------------------------ resume rules
def test_moved_folder_resumes_where_it_is_now(finished, tmp_path):
    a = copy(finished, tmp_path/'A'); b = tmp_path/'B'
    shutil.move(a, b)                                        # config.json still says out = .../fin/run
    p = cli('--resume', '--out', b, '--epochs', '3')         # extend the moved run by one epoch
    assert p.returncode == 0, p.stderr
    assert f'resuming {b} at epoch 3' in p.stdout
    assert final(b)['epochs'] == 3 and [m['epoch'] for m in metrics(b)] == [1, 2, 3]
    assert json.loads((b/'config.json').read_text())['out'] == str(b)
    assert not a.exists() and final(finished)['epochs'] == 2     # the old place is untouched

def test_resume_that_changes_the_run_is_refused_and_changes_nothing(finished, tmp_path):
    out = copy(finished, tmp_path/'run')
    before = snapshot(out)
    for args, want in [(['--lr', '1e6'], 'lr 0.02 -> 1000000.0'), (['--loss', 'ala'], "loss 'ce' -> 'ala'"),
                       (['--seed', '3'], 'seed 0 -> 3'), (['--epochs', '1'], 'the run has done 2'),
                       (['--cfg', '{"sampler": "sqrt", "batch_size": 16}'], "batch_size 32 -> 16, sampler 'random' -> 'sqrt'")]:
        line = one_error(cli('--resume', '--out', out, *args))
        assert f'--resume of {out} would change the run' in line and want in line, line
        assert snapshot(out) == before, args
    p = cli('--resume', '--out', out, '--epochs', '3')       # the folder is still resumable
    assert p.returncode == 0, p.stderr

def test_deleted_config_json_resumes_from_the_checkpoints_config(finished, tmp_path):
    out = copy(finished, tmp_path/'run')
    (out/'config.json').unlink()
    p = cli('--resume', '--out', out, '--epochs', '3')
    assert p.returncode == 0, p.stderr
    assert 'config.json was missing: rewritten from' in p.stdout
    fin = final(out)
    assert (fin['loss'], fin['preset'], fin['epochs']) == ('ce', 'fmnist_lt_tiny', 3)   # not the default preset's ala
    assert json.loads((out/'config.json').read_text())['lr'] == 0.02

def test_a_runs_own_config_json_reruns_it(finished, tmp_path):
    out = tmp_path/'again'
    p = cli('--cfg', finished/'config.json', '--out', out)
    assert p.returncode == 0, p.stderr
    assert final(out)['top1'] == final(finished)['top1']     # the same run again, bit for bit on the CPU


# ------------------------------------------------------------------------------------------------ one live run per folder
def test_two_runs_on_one_folder_second_is_refused(tmp_path):
    out = tmp_path/'run'
    with open(tmp_path/'a.log', 'w') as la:
        a = subprocess.Popen([sys.executable, script('ala_train'), *TINY, '--out', str(out)],
                             stdout=la, stderr=subprocess.STDOUT, cwd=ROOT, env=dict(ENV, **delay(1.0)))
        wait_for(lambda: (out/'run.lock').exists(), a)
        b = cli(*TINY, '--loss', 'ce', '--out', out)                  # started while the first runs
        r = cli(*TINY, '--out', out, '--resume')                      # a resume while it runs: refused too
        assert a.poll() is None, 'the first run ended before the others were tried: slow the test down'
        a.send_signal(signal.SIGTERM); a.wait(timeout=300)
    line = one_error(b)
    assert f'run folder {out} is in use by pid {a.pid} on host {socket.gethostname()}' in line, line
    assert 'is in use by pid' in one_error(r)
    assert a.returncode == 143, (tmp_path/'a.log').read_text()     # preempted (EXIT_PREEMPTED)
    cfg, st = json.loads((out/'config.json').read_text()), ckpt(out)
    assert cfg['loss'] == st['config']['loss'] == 'ala'
    ep = [m['epoch'] for m in metrics(out)] if (out/'metrics.jsonl').exists() else []
    assert ep == list(range(1, st['epoch'] + 1))                     # every finished epoch once
    assert not (out/'run.lock').exists()


# ------------------------------------------------------------------------------------------------ overwrite keeps the old run until the new one exists
def test_overwrite_that_fails_keeps_the_old_run(finished, tmp_path):
    out = copy(finished, tmp_path/'run')
    before = snapshot(out)
    p = cli(*TINY, '--out', out, '--overwrite', '--lr', '1e30', '--loss', 'ce')   # diverges in epoch 1
    assert 'non-finite training loss in epoch 1' in one_error(p, code=3)
    assert snapshot(out) == before                                    # put back exactly
    p = cli(*TINY, '--out', out, '--overwrite', '--loss', 'ala', '--epochs', '1')
    assert p.returncode == 0, p.stderr
    assert final(out)['loss'] == 'ala' and not (out/'replaced').exists()

def test_overwrite_killed_midway_leaves_the_old_run_in_replaced(finished, tmp_path):
    out = copy(finished, tmp_path/'run')
    old = snapshot(out)
    with open(tmp_path/'log', 'w') as log:
        p = start('ala_train', *TINY, '--out', out, '--overwrite', log=log, env=delay(0.05))
        wait_for(lambda: ckpt(out)['epoch'] >= 1 and ckpt(out)['config']['loss'] == 'ala', p)
        os.kill(p.pid, signal.SIGKILL); p.wait()
    assert snapshot(out/'replaced') == old                            # the finished run, complete
    line = one_error(cli(*TINY, '--out', out, '--overwrite'))
    assert 'keeps an older run in replaced/' in line
    p = cli(*TINY, '--out', out, '--resume')                          # the new run continues
    assert p.returncode == 0, p.stderr
    assert not (out/'replaced').exists() and final(out)['loss'] == 'ala'


# ------------------------------------------------------------------------------------------------ failures that leave no trace
def test_fresh_run_that_fails_early_leaves_nothing_and_can_be_rerun(tmp_path):
    out = tmp_path/'run'
    assert 'non-finite' in one_error(cli(*TINY, '--loss', 'ce', '--lr', '1e30', '--out', out), code=3)
    assert not out.exists()
    out.mkdir(); (out/'notes.txt').write_text('mine')
    one_error(cli(*TINY, '--loss', 'ce', '--lr', '1e30', '--out', out), code=3)
    assert sorted(os.listdir(out)) == ['notes.txt']                  # its own files gone, the user's kept
    (out/'config.json').write_text(json.dumps({'loss': 'ce'}))        # what a killed fresh run leaves: blocks nothing
    (out/'.checkpoint.pt.999.tmp').write_bytes(b'x'); (out/'checkpoint.pt.12.tmp').write_bytes(b'x')
    p = cli(*TINY, '--epochs', '1', '--out', out)
    assert p.returncode == 0, p.stderr
    assert not [f for f in os.listdir(out) if f.endswith('.tmp')]     # a kill's leftovers are cleaned up
    assert 'notes.txt' in os.listdir(out)

BAD = [  # (arguments, what the one error line must name)
    (['--out', ''], "--out must name a folder, got ''"),
    (['--cfg', '{"normed": "false"}'], "normed must be true/false or null, got 'false'"),
    (['--cfg', '{"lr_steps": 5}'], 'lr_steps must be a list, got 5'),
    (['--cfg', '{"epochs": "three"}'], "--cfg: epochs 'three': expected an integer"),
    (['--cfg', '{"epochs": 3.5}'], 'epochs must be an integer, got 3.5'),
    (['--cfg', '{"out": "x"}'], '--cfg: give out as flags'),
    (['--data_root', '/nonexistent/fmnist'], 'data root /nonexistent/fmnist does not exist'),
    (['--data_root', '/etc/passwd'], 'data root /etc/passwd is not a folder'),
    (['--data_root', '/tmp'], 'data root /tmp: Fashion-MNIST not found there'),
    (['--cfg', '/nonexistent/config.json'], '/nonexistent/config.json: config file not found'),
    (['--batch_size', '1000'], 'batch_size 1000 is larger than the training set'),
]

def test_bad_input_one_line(tmp_path):
    for args, want in BAD:
        out = tmp_path/'r'
        extra = [] if '--out' in args else ['--out', out]
        line = one_error(cli(*TINY, *args, *extra))
        assert want in line, (args, line)
        assert not out.exists(), args

def test_pretrained_not_a_torch_file(tmp_path):
    junk = tmp_path/'weights.pth'; junk.write_text('not a state dict')
    line = one_error(cli(*TINY, '--out', tmp_path/'r', '--cfg', json.dumps({'pretrained': str(junk)})))
    assert str(junk) in line and 'not a state-dict file' in line and 'weights_only' not in line, line
    assert not (tmp_path/'r').exists()

@pytest.mark.parametrize('epochs', [1, 2])
def test_any_epochs_on_the_default_preset(tmp_path, epochs):
    out = tmp_path/'r'
    p = cli('--device', 'cpu', '--epochs', epochs, '--max_test', 100, '--threads', 1, '--out', out)
    assert p.returncode == 0, p.stderr
    c = json.loads((out/'config.json').read_text())
    assert c['epochs'] == epochs and c['drw_epoch'] == epochs - 1 and c['lr_steps'] == []
    assert [m['drw'] for m in metrics(out)] == [e >= epochs - 1 for e in range(epochs)]


# ------------------------------------------------------------------------------------------------ split-file data sets
def _split_set(root, bad=None):
    "A stand-in Places-LT: one tiny training image per class of the 365 (class 2's `bad`: 'junk' or 'missing'), 2 test images."
    lines = []
    for i in range(365):
        p = root/f'train/c{i:03d}/img{i}.jpg'; p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 20, 3), i % 250, np.uint8)).save(p)
        lines.append(f'train/c{i:03d}/img{i}.jpg {i}')
    if bad == 'junk': (root/'train/c002/img2.jpg').write_bytes(b'not a jpeg')
    if bad == 'missing': (root/'train/c002/img2.jpg').unlink()
    (root/'Places_LT_train.txt').write_text('\n'.join(lines) + '\n')
    (root/'Places_LT_test.txt').write_text('train/c000/img0.jpg 0\ntrain/c001/img1.jpg 1\n')

@pytest.mark.parametrize('bad, want', [('junk', 'unreadable image'), ('missing', 'image not found')])
def test_bad_image_with_dataloader_workers_is_named(tmp_path, bad, want):
    _split_set(tmp_path, bad)
    line = one_error(cli('--preset', 'places_lt_r152', '--arch', 'resnet8', '--device', 'cpu', '--data_root', tmp_path,
                         '--batch_size', 365, '--epochs', 1, '--out', tmp_path/'r',
                         '--cfg', '{"num_workers": 2, "pretrained": null}'))
    assert f'{tmp_path}/train/c002/img2.jpg: {want}' in line and 'Places_LT_train.txt:3' in line, line
    assert len(line) < 400 and 'Original Traceback' not in line and 'DataLoader worker' not in line, line
    assert not (tmp_path/'r').exists()


# ------------------------------------------------------------------------------------------------ unwritable and full disks
@contextlib.contextmanager
def tmpfs(path, opts):
    path.mkdir()
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', opts, 'tmpfs', str(path)], capture_output=True, text=True)
    if r.returncode: pytest.skip(f'cannot mount a tmpfs here ({r.stderr.strip()}): needs root and mount rights')
    try: yield path
    finally: subprocess.run(['umount', '-l', str(path)])

def test_read_only_out(tmp_path):
    with tmpfs(tmp_path/'ro', 'ro,size=1m') as ro:
        line = one_error(cli(*TINY, '--out', ro/'run'))
        assert f'{ro}/run' in line and 'Read-only file system' in line, line

def test_full_disk_names_the_file_and_keeps_the_last_checkpoint(tmp_path):
    with tmpfs(tmp_path/'small', 'size=1400k') as d:
        out = d/'run'
        line = one_error(cli(*TINY, '--out', out))
        assert 'No space left on device' in line and 'checkpoint' in line, line
        assert 'unexpected pos' not in line
        st = ckpt(out)                                              # the last good checkpoint still loads
        assert st['epoch'] >= 1 and not (out/'final.json').exists()
        assert not [f for f in os.listdir(out) if f.endswith(('.tmp', '.new'))]


# ------------------------------------------------------------------------------------------------ signals
def test_ctrl_c_saves_and_resumes_exactly(tmp_path):
    ref = tmp_path/'ref'
    assert cli(*TINY, '--out', ref).returncode == 0
    out = tmp_path/'run'
    with open(tmp_path/'log', 'w') as log:
        p = start('ala_train', *TINY, '--out', out, log=log, env=delay(0.1))
        wait_for(lambda: ckpt(out)['epoch'] >= 1, p)
        time.sleep(0.5)
        p.send_signal(signal.SIGINT); p.wait(timeout=120)
    text = (tmp_path/'log').read_text()
    assert p.returncode == 130, text
    assert 'preempted (SIGINT) in epoch 2' in text and 'Traceback' not in text and 'KeyboardInterrupt' not in text
    st = ckpt(out); assert st['epoch'] == 1 and st['step'] > 0        # the partial epoch is kept
    r = cli(*TINY, '--out', out, '--resume')
    assert r.returncode == 0, r.stderr
    a, b = ckpt(out)['model'], ckpt(ref)['model']
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert metrics(out) == metrics(ref)


# ------------------------------------------------------------------------------------------------ issue 17: what a command reads is checked
def _replaced_left_behind(finished, out):
    "What a `--overwrite` killed before its first checkpoint leaves: the finished run in replaced/, a config.json on top."
    out.mkdir(); shutil.copytree(finished, out/'replaced')
    shutil.copy(finished/'config.json', out/'config.json')
    return out

def test_only_the_run_that_set_a_run_aside_may_drop_it(finished, tmp_path):
    out = _replaced_left_behind(finished, tmp_path/'run')
    before = snapshot(out)
    for args in ([], ['--resume']):                          # a plain run; a resume with nothing to resume
        line = one_error(cli(*TINY, '--out', out, *args))
        assert f'{out}/replaced' in line and 'move it back' in line and '--overwrite' in line, line
        assert snapshot(out) == before, args                 # the finished run is still there, complete

def test_a_stray_torchelastic_restart_count_is_refused(finished, tmp_path):
    out = copy(finished, tmp_path/'run')
    before = snapshot(out)
    line = one_error(cli(*TINY, '--out', out, '--overwrite', env=dict(ENV, TORCHELASTIC_RESTART_COUNT='1')))
    assert 'TORCHELASTIC_RESTART_COUNT=1' in line and 'torchrun' in line, line
    assert snapshot(out) == before

def test_resume_of_a_missing_folder_is_refused(tmp_path):
    out = tmp_path/'nowhere'
    line = one_error(cli(*TINY, '--resume', '--out', out))
    assert f'--resume of {out}: no such run folder' in line, line
    assert not out.exists()

def test_a_checkpoint_given_as_config_is_named(finished):
    line = one_error(cli('--config', finished/'checkpoint.pt', '--out', finished/'x'))
    assert f'{finished}/checkpoint.pt is a checkpoint, not a config' in line and 'YAML/JSON' in line, line
    assert 'utf-8' not in line.lower()

def _driver(tmp_path, body, *argv, env=None):
    "Run `ala_train` with `argv` in a fresh interpreter after `body` (Python that patches the package) has run."
    d = tmp_path/'driver.py'
    d.write_text('import sys, os, errno, time\n' + body + '\nfrom ala_nb.train_cli import ala_train\n'
                 f'sys.argv = ["ala_train", *{[str(a) for a in argv]!r}]\nsys.exit(ala_train())\n')
    return subprocess.Popen([sys.executable, str(d)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=dict(ENV, **(env or {})))

def test_ctrl_c_during_start_up_is_one_line_and_leaves_nothing(tmp_path):
    out = tmp_path/'run'
    slow = ('import ala_nb.build as B\nload = B.load_data\n'
            'def slow(cfg): time.sleep(60); return load(cfg)\nB.load_data = slow\n')
    p = _driver(tmp_path, slow, *TINY, '--out', out)
    wait_for(lambda: (out/'run.lock').exists(), p)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    o, e = p.communicate(timeout=60)
    assert p.returncode == 130 and e.strip().splitlines() == ['ala_train: interrupted'], (p.returncode, e[-3000:])
    assert not out.exists()

def test_full_disk_while_writing_final_json_names_the_file(tmp_path):
    out = tmp_path/'run'
    full = ('import os as _os\nreplace = _os.replace\n'
            'def nospace(a, b, *k, **kw):\n'
            '    if str(b).endswith("final.json"): raise OSError(errno.ENOSPC, _os.strerror(errno.ENOSPC))\n'
            '    return replace(a, b, *k, **kw)\n'
            '_os.replace = nospace\n')
    p = _driver(tmp_path, full, *TINY, '--epochs', '1', '--out', out)
    o, e = p.communicate(timeout=300)
    lines = e.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and 'Traceback' not in e, (p.returncode, e[-3000:])
    assert f'{out}/final.json' in lines[0] and 'No space left on device' in lines[0], lines[0]
    assert not (out/'final.json').exists() and ckpt(out)['epoch'] == 1      # the last checkpoint is kept

def test_a_bad_flag_on_another_rank_still_says_why(tmp_path):
    p = cli(*TINY, '--lr', '0', '--out', tmp_path/'r', env=dict(ENV, RANK='1', WORLD_SIZE='2'))
    assert 'lr must be a finite number > 0' in one_error(p)

def test_a_stray_rank_without_a_group_is_refused(tmp_path):
    "RANK=1 left in the shell, no WORLD_SIZE: a rank that writes nothing would train for nothing."
    line = one_error(cli(*TINY, '--out', tmp_path/'r', env=dict(ENV, RANK='1')))
    assert 'RANK=1' in line and 'WORLD_SIZE=1' in line, line
    assert not (tmp_path/'r').exists()
