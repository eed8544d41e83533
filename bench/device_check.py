"""The device check: every GPU figure of ala_nb in one go (<= 8 minutes on one H100), one JSON out. Run it through
`bench/device_check.sh`, after `bench/device_prepare.sh` filled `.device/` where there is a network.

Made for an air-gapped node with a stock PyTorch image (no fastcore, fastprogress or nbdev; ala_nb not installed;
no Fashion-MNIST): the packages come from `.device/site` (PYTHONPATH), the data from `.device/fashion-mnist`
(ALA_DATA), ala_nb from this checkout (PYTHONPATH), the console scripts as `python -m ala_nb.<module>`.

Stages, one after another (never side by side: timings are not taken under load), each a subprocess with its own
cap, its own try, and the JSON rewritten atomically after it; the caps sum below the budget:
  preflight      imports from the carried folder, data, CUDA, versions (stops the check if anything is missing)
  protocol       `ala_train --preset fmnist_lt_cifar` (the headline: first, so nothing before it can eat its time)
  bench_<part>   `ala_bench --parts <part>`: captured, train, cache, loss, deterministic, loader
  pytest_gpu     the tests marked gpu (`pytest -m gpu`)
  ddp_cudagraphs pytorch#139207 probe, with TORCH_LOGS=cudagraphs,perf_hints (skips logged as perf hints too)
  notebooks      the notebooks with `#| gpu` cells, up to the last one, through bench/run_notebook.py --flags gpu
                 (nbdev is not there)
Under $OUT: device_check.json and device_check_logs.tar.gz (every log, the protocol's run folder without
checkpoints), rewritten after every stage: 2 files. A stage that was not run (out of budget, --skip, needs CUDA)
never counts as passed. `--cpu`: the CPU-capable parts at tiny sizes (the dry run); GPU-only stages are reported
as 'needs CUDA', and the check passes when every other stage is ok.
"""
import argparse, datetime, io, json, os, platform, re, shutil, signal, subprocess, sys, tarfile, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEVICE_DIR = ROOT/'.device'
BENCH_PARTS = ('captured', 'train', 'cache', 'loss', 'deterministic', 'loader')   # headline first
GPU_ONLY = ('ddp_cudagraphs',)
# caps in seconds: (on a GPU, with --cpu). GPU caps sum to 455 s (+ the preflight's 20) < 480 s.
CAPS = dict(preflight=(20, 60), protocol=(150, 420), bench_captured=(50, 300), bench_train=(40, 300),
            bench_cache=(35, 240), bench_loss=(15, 240), bench_deterministic=(25, 240), bench_loader=(10, 120),
            pytest_gpu=(40, 240), ddp_cudagraphs=(25, 60), notebooks=(45, 900))
BUDGET = (470., 3000.)
MAX_OUT_FILES = 8

PREFLIGHT = r'''
import json, os, sys, time, importlib
t0, r, missing = time.time(), {}, []
r['python'], r['executable'] = sys.version.split()[0], sys.executable
for m in ('torch', 'torchvision', 'numpy', 'pytest', 'fastcore', 'fastprogress', 'PIL'):
    try:
        mod = importlib.import_module(m)
        r[m] = dict(version=getattr(mod, '__version__', '?'), path=os.path.dirname(mod.__file__))
    except Exception as e: missing.append(f"import {m}: {type(e).__name__}: {e}")
for m in ('ala_nb.step', 'ala_nb.captured', 'ala_nb.cache', 'ala_nb.train', 'ala_nb.cli', 'ala_nb.bench', 'ala_nb.bench_cli', 'ala_nb.train_cli'):
    try: mod = importlib.import_module(m); r.setdefault('ala_nb', os.path.dirname(mod.__file__))
    except Exception as e: missing.append(f"import {m}: {type(e).__name__}: {e}")
if r.get('ala_nb') and os.path.realpath(r['ala_nb']) != os.path.realpath(os.path.join(os.environ['ALA_ROOT'], 'ala_nb')):
    missing.append(f"ala_nb comes from {r['ala_nb']}, not from this checkout")
try:
    from ala_nb.data import find_fashion_mnist
    r['fashion_mnist'] = {k: str(v) for k, v in find_fashion_mnist().items()}
except Exception as e: missing.append(f"Fashion-MNIST: {type(e).__name__}: {' '.join(str(e).split())[:400]}")
try:
    import torch
    r['cuda_available'], r['cuda'] = torch.cuda.is_available(), torch.version.cuda
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        r.update(device_name=p.name, device_count=torch.cuda.device_count(), capability=f"{p.major}.{p.minor}",
                 device_memory_gib=round(p.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version())
        x = torch.randn(256, 256, device='cuda'); r['cuda_matmul_ok'] = bool(torch.isfinite(x @ x).all())
    elif os.environ.get('ALA_CHECK_CPU') != '1': missing.append("CUDA: torch.cuda.is_available() is False")
    else: r['device_name'] = 'cpu'
except Exception as e: missing.append(f"CUDA: {type(e).__name__}: {e}")
r['missing'], r['seconds'] = missing, round(time.time() - t0, 1)
print('PREFLIGHT ' + json.dumps(r))
'''

def run(cmd:list, timeout:float, log:Path, env:dict, cwd=ROOT)->dict:
    "Run `cmd` to its end or for `timeout` s (then its whole process group is killed); output to `log`."
    t0 = time.time()
    with open(log, 'w') as f:
        f.write(f"$ {' '.join(map(str, cmd))}\n"); f.flush()
        try: p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True)
        except OSError as e: return dict(cmd=' '.join(map(str, cmd)), rc=None, timed_out=False, wall_s=0., error=str(e))
        try: rc, timed_out = p.wait(timeout=max(1., timeout)), False
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL); rc, timed_out = p.wait(), True
        finally:
            if p.poll() is None: os.killpg(p.pid, signal.SIGKILL); p.wait()
    text = log.read_text(errors='replace')
    return dict(cmd=' '.join(map(str, cmd)), rc=rc, timed_out=timed_out, wall_s=round(time.time() - t0, 1),
                cap_s=round(timeout, 1), log=log.name, tail=text[-2000:])

def status(r:dict)->str:
    "ok / failed (rc N) / timed out / needs CUDA / not run (why)."
    if 'not_run' in r: return f"not run ({r['not_run']})"
    if r.get('needs_cuda'): return 'needs CUDA'
    if r.get('timed_out'): return 'timed out'
    if r.get('rc') == 0 and not r.get('failed'): return 'ok'
    return f"failed (rc {r.get('rc')}){': ' + r['failed'] if r.get('failed') else ''}"

def pytest_counts(text:str)->dict:
    "passed/failed/skipped/... from pytest's last summary line."
    lines = [l for l in text.strip().splitlines() if re.search(r'\d+ (passed|failed|skipped|deselected|error)', l)]
    return {k: int(n) for n, k in re.findall(r'(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)', lines[-1])} if lines else {}

def write_atomic(path:Path, data:bytes):
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    with open(tmp, 'wb') as f: f.write(data); f.flush(); os.fsync(f.fileno())
    os.replace(tmp, path)

def archive(work:Path, dest:Path):
    "Every file under `work` (logs, results, the protocol's run folder) into one .tar.gz, atomically."
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w:gz') as t:
        for p in sorted(work.rglob('*')):
            if p.is_file() and not p.name.endswith(('.pt', '.tmp')): t.add(p, arcname=str(p.relative_to(work)))
    write_atomic(dest, buf.getvalue())

def gpu_notebooks()->list:
    return sorted(p.name for p in (ROOT/'nbs').glob('*.ipynb') if '#| gpu' in p.read_text())

def gpu_test_files()->list:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT/'tests').glob('test_*.py') if 'mark.gpu' in p.read_text()
                  or re.search(r'^cuda = ', p.read_text(), re.M))

def git_rev()->str:
    try:
        rev = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True, cwd=ROOT, timeout=10).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], capture_output=True, text=True,
                               cwd=ROOT, timeout=10).stdout.strip()
        return rev + (' +changes' if dirty else '')
    except (OSError, subprocess.TimeoutExpired): return 'unknown'

def summary(res:dict)->dict:
    "The figures worth reading first, and whether the check passed."
    S, s, cpu = res['stages'], {}, res['meta']['mode'] == 'cpu'
    pf = (S.get('preflight') or {}).get('results') or {}
    s['device_name'] = pf.get('device_name') or res['meta'].get('device_name')
    s['torch'] = (pf.get('torch') or {}).get('version')
    s['mode'] = res['meta']['mode']
    s['stages'] = {k: status(v) for k, v in S.items()}
    want = lambda k: 'needs CUDA' if cpu and k in GPU_ONLY + ('pytest_gpu',) else 'ok'
    s['ok'] = bool(S) and all(v == want(k) for k, v in s['stages'].items()) and set(S) >= set(res['meta']['stages'])
    p = S.get('protocol') or {}
    if p.get('final'): s['protocol'] = dict(p['final'], table=p.get('table'))
    for part in BENCH_PARTS:
        b = ((S.get(f'bench_{part}') or {}).get('results') or {}).get(part)
        if not b: continue
        if part in ('train', 'captured'):
            s[part] = dict(ours_img_s=b['ours_img_s'], reference_img_s=b['reference_img_s'], ratio=b['ratio'], amp=b['amp'])
            if b.get('fp32'): s[part]['fp32'] = {k: b['fp32'][k] for k in ('ours_img_s', 'reference_img_s', 'ratio')}
            if b.get('equivalence'): s[part]['equivalence'] = {k: b['equivalence'].get(k) for k in ('max_rel_diff', 'ok', 'eager_tf32')}
        elif part == 'cache': s['cache'] = {k: b.get(k) for k in ('cache_vs_synthetic', 'cache_vs_dataloader', 'cache_img_s', 'synthetic_img_s')}
        elif part == 'deterministic': s['deterministic'] = {k: b.get(k) for k in ('slowdown', 'reproducible')}
        elif part == 'loss': s['loss_ala_over_ce'] = {f"{l['B']}x{l['C']}{'/' + l['compile'] if l.get('compile') else ''}": round(l['ratio'], 3) for l in b}
        elif part == 'loader': s['loader'] = {k: b.get(k) for k in ('device_loader_img_s', 'torchvision_img_s', 'ratio')}
    d = (S.get('ddp_cudagraphs') or {}).get('results')
    if d: s['ddp_cudagraph_skips'] = {v['variant']: v.get('skips') for v in d.get('variants', [])}
    t = (S.get('pytest_gpu') or {}).get('counts')
    if t: s['pytest_gpu'] = t
    return s

def main(argv=None)->int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--cpu', action='store_true', help='the CPU-capable parts at tiny sizes (the dry run; no GPU needed)')
    ap.add_argument('--out', default=None, help='folder for the results (default: $OUT, else ./device_check_out)')
    ap.add_argument('--budget', type=float, default=None, help=f'seconds for everything (default: {BUDGET[0]:.0f} on a GPU)')
    stages_all = ('preflight', 'protocol', *(f'bench_{p}' for p in BENCH_PARTS), 'pytest_gpu', 'ddp_cudagraphs', 'notebooks')
    ap.add_argument('--skip', default='', help=f"comma-separated stages to leave out (reported as not run): {', '.join(stages_all[1:])}")
    ap.add_argument('--notebooks', default=None, help='comma-separated notebooks of the notebook stage (default: every one with a #| gpu cell)')
    a = ap.parse_args(argv)
    cpu = a.cpu
    out = Path(a.out or os.environ.get('OUT') or 'device_check_out').resolve()
    out.mkdir(parents=True, exist_ok=True)
    skip = {s.strip() for s in a.skip.split(',') if s.strip()}
    if skip - set(stages_all[1:]): sys.exit(f"device_check: error: unknown --skip {', '.join(sorted(skip - set(stages_all)))}; choose from {', '.join(stages_all[1:])}")
    work = Path(tempfile.mkdtemp(prefix='device_check_'))
    t_start = time.time(); budget = a.budget or BUDGET[cpu]; deadline = t_start + budget
    env = dict(os.environ, PYTHONUNBUFFERED='1', MPLBACKEND='Agg', ALA_ROOT=str(ROOT), PYTHONDONTWRITEBYTECODE='1')
    paths = [str(ROOT)] + ([str(DEVICE_DIR/'site')] if (DEVICE_DIR/'site').is_dir() else [])
    env['PYTHONPATH'] = os.pathsep.join(paths + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
    if not env.get('ALA_DATA') and (DEVICE_DIR/'fashion-mnist').is_dir(): env['ALA_DATA'] = str(DEVICE_DIR/'fashion-mnist')
    env['XDG_CACHE_HOME'] = str(work/'cache')            # nothing written outside the work folder (torch.compile's too)
    env['TORCHINDUCTOR_CACHE_DIR'] = str(work/'cache'/'inductor')
    if cpu: env.update(ALA_CHECK_CPU='1', OMP_NUM_THREADS=env.get('OMP_NUM_THREADS', '1'), CUDA_VISIBLE_DEVICES='')
    py = sys.executable
    res = dict(meta=dict(mode='cpu' if cpu else 'gpu', host=platform.node(), python=platform.python_version(),
                         executable=py, git=git_rev(), budget_s=budget, stages=list(stages_all),
                         started=datetime.datetime.now().astimezone().isoformat(timespec='seconds'), cpu_count=os.cpu_count(),
                         pythonpath=env['PYTHONPATH'], ala_data=env.get('ALA_DATA')), stages={})
    S = res['stages']
    jpath, apath = out/'device_check.json', out/'device_check_logs.tar.gz'
    say = lambda s: print(f"device_check [{time.time() - t_start:5.0f}s]: {s}", flush=True)

    def save():
        res['summary'] = summary(res)
        res['meta']['elapsed_s'] = round(time.time() - t_start, 1)
        write_atomic(jpath, (json.dumps(res, indent=1, default=str) + '\n').encode())
        archive(work, apath)

    def stage(name:str, cmd:list, extra_env=None, after=None):
        cap = CAPS[name][cpu]
        if name in skip: S[name] = dict(not_run='--skip')
        elif time.time() + min(cap, 5) > deadline: S[name] = dict(not_run=f'out of budget ({budget:.0f} s)')
        else:
            say(f"{name} (cap {cap} s)")
            r = run(cmd, min(cap, deadline - time.time()), work/f'{name}.log', dict(env, **(extra_env or {})))
            try:
                if after: after(r)
            except Exception as e: r['failed'] = f"reading its results: {type(e).__name__}: {e}"
            S[name] = r
        say(f"{name}: {status(S[name])}" + (f" in {S[name]['wall_s']} s" if 'wall_s' in S[name] else ''))
        save()

    # 0. preflight: everything the stages need, or stop here
    def pre(r):
        line = next((l for l in (work/'preflight.log').read_text(errors='replace').splitlines() if l.startswith('PREFLIGHT ')), None)
        if line is None: r['failed'] = 'no report'; return
        r['results'] = json.loads(line[len('PREFLIGHT '):])
        if r['results']['missing']: r['failed'] = '; '.join(r['results']['missing'])
    stage('preflight', [py, '-c', PREFLIGHT], after=pre)
    if status(S['preflight']) != 'ok':
        say("preflight failed: stopping (see the JSON's stages.preflight)")
        print(json.dumps(res['summary'], indent=1)); return 1
    res['meta']['device_name'] = S['preflight']['results'].get('device_name')

    # 1. the headline: the LDAM-DRW CIFAR-10-LT protocol on Fashion-MNIST, with the captured step
    rd = work/'protocol_run'
    cmd = [py, '-m', 'ala_nb.train_cli', '--preset', 'fmnist_lt_cifar', '--out', str(rd)]
    cmd += (['--device', 'cpu', '--epochs', '1', '--arch', 'resnet8', '--n_max', '100', '--max_test', '200', '--threads', '1']
            if cpu else ['--device', 'cuda'])
    def prot(r):
        fj = rd/'final.json'
        if not fj.is_file(): return
        f = json.loads(fj.read_text())
        r['final'] = {k: f.get(k) for k in ('top1', 'wall_s', 'first_step_s', 'train_images_per_s', 'epochs', 'arch',
                                            'device', 'loss', 'drw', 'drw_epoch', 'dataset', 'preset', 'step')}
        r['final']['process_wall_s'] = r['wall_s']
        lines = (work/'protocol.log').read_text(errors='replace').splitlines()
        k = next((i for i in range(len(lines) - 1, -1, -1) if lines[i].startswith('fmnist_lt_cifar ')), None)
        r['table'] = '\n'.join(lines[k:k + 4]) if k is not None else None
        for p in rd.glob('*.pt'): p.unlink()                              # keep the archive small
    stage('protocol', cmd, after=prot)

    # 2. ala_bench, one part per process (its own cap; a hung or failed part leaves the others)
    tiny = ['--device', 'cpu', '--steps', '2', '--rounds', '1', '--batch_size', '16', '--arch', 'resnet8', '--workers', '0',
            '--threads', '1', '--cache_arch', 'resnet8', '--cache_images', '8', '--cache_batch', '4', '--cache_workers', '1']
    gpu = ['--device', 'cuda', '--rounds', '3', '--steps', '100']
    for part in BENCH_PARTS:
        bj = work/f'bench_{part}.json'
        def bench_after(r, bj=bj, part=part):
            if not bj.is_file(): return
            r['results'] = json.loads(bj.read_text())
            err = r['results']['meta'].get('errors', {}).get(part)
            if err: r['failed'] = err[:300]
            if part == 'captured' and r['results'].get('captured') and not r['results']['captured']['equivalence']['ok']:
                r['failed'] = 'the captured step does not match eager float32'
        stage(f'bench_{part}', [py, '-m', 'ala_nb.bench_cli', '--parts', part, '--out', str(bj), '--overwrite'] + (tiny if cpu else gpu),
              after=bench_after)

    # 3. the tests marked gpu (all skipped without CUDA: 'needs CUDA' with --cpu)
    def pyt(r):
        r['counts'] = pytest_counts((work/'pytest_gpu.log').read_text(errors='replace'))
        c = r['counts']
        if cpu and r['rc'] == 0 and c.get('skipped', 0) > 0 and not c.get('passed') and not c.get('failed'): r['needs_cuda'] = True
        elif not c.get('passed') and r['rc'] == 0: r['failed'] = 'no test ran'
    stage('pytest_gpu', [py, '-m', 'pytest', *gpu_test_files(), '-m', 'gpu', '-q', '-rs', '-p', 'no:cacheprovider'], after=pyt)

    # 4. the DDP / CUDA-graph probe (needs CUDA and NCCL)
    if cpu: S['ddp_cudagraphs'] = dict(needs_cuda=True); say('ddp_cudagraphs: needs CUDA'); save()
    else:
        pj = work/'ddp_cudagraphs.json'
        def ddp(r):
            text = (work/'ddp_cudagraphs.log').read_text(errors='replace')
            r['log_skip_lines'] = [l.strip()[-300:] for l in text.splitlines() if 'skipping cudagraphs' in l][:20]
            if not pj.is_file(): return
            r['results'] = json.loads(pj.read_text())
            per, cur = {}, None                                  # TORCH_LOGS lines per variant (the probe marks each)
            for l in text.splitlines():
                if l.startswith('=== variant '): cur = l.split()[2]
                elif cur and 'skipping cudagraphs' in l: per[cur] = per.get(cur, 0) + 1
            for v in r['results'].get('variants', []):           # torch's counter (what the trainer reads) vs the log
                v['log_skip_lines'] = per.get(v['variant'], 0)
                v['detection_agrees'] = (v.get('skips', 0) > 0) == (v['log_skip_lines'] > 0)
        stage('ddp_cudagraphs', [py, str(ROOT/'bench/ddp_cudagraphs.py'), '--out', str(pj)],
              extra_env=dict(TORCH_LOGS='cudagraphs,perf_hints'), after=ddp)

    # 5. the notebooks with GPU cells, one after another in one process each
    nbs = [n.strip() for n in a.notebooks.split(',')] if a.notebooks else gpu_notebooks()
    flags = '' if cpu else 'gpu'
    script = ('import subprocess, sys\nrc = 0\nfor nb in sys.argv[1:]:\n'
              f'    r = subprocess.run([sys.executable, {str(ROOT/"bench/run_notebook.py")!r}, "nbs/" + nb, "--flags", {flags!r}, "--upto", "gpu"])\n'
              '    print(f"NOTEBOOK {nb} rc {r.returncode}", flush=True); rc = rc or r.returncode\nsys.exit(rc)\n')
    def nb_after(r):
        r['notebooks'] = {m.group(1): int(m.group(2)) for m in re.finditer(r'^NOTEBOOK (\S+) rc (-?\d+)$',
                                                                          (work/'notebooks.log').read_text(errors='replace'), re.M)}
        r['flags'] = flags
    stage('notebooks', [py, '-c', script, *nbs], after=nb_after)

    res['meta']['finished'] = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
    save()
    files = sorted(str(p.relative_to(out)) for p in out.rglob('*') if p.is_file())
    if len(files) > MAX_OUT_FILES: say(f"warning: {len(files)} files under {out} (at most {MAX_OUT_FILES} come back)")
    print(json.dumps(res['summary'], indent=1))
    say(f"wrote {jpath} and {apath.name} ({'passed' if res['summary']['ok'] else 'NOT passed'})")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if res['summary']['ok'] else 1

if __name__ == '__main__': sys.exit(main())
