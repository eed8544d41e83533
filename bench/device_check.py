"""The device check: every GPU check of ala_nb in one go, one JSON out. Run it through `bench/device_check.sh`.

Stages (each a subprocess with its own time limit, inside one overall budget; a stage that fails or runs out of
time is recorded and the next one runs):

1. `notebooks`  `nbdev_test --flags gpu` on every notebook with a `#| gpu` cell (found by grep), in parallel;
2. `pytest_gpu` the GPU tests of the suite (`pytest tests -k gpu`);
3. `ddp_cudagraphs`  pytorch#139207: does `torch.compile(mode='reduce-overhead')` skip CUDA graphs for a BatchNorm
   model under DDP? `bench/ddp_cudagraphs.py`, with `TORCH_LOGS=cudagraphs` parsed beside torch's skip counter
   (the one `ala_nb.train` reads to warn);
4. `bench`      `ala_bench` with every part: the loss, training with the eager and with the captured step against
   the LDAM-DRW-style reference (the captured step's losses checked against eager float32), the loader, the cache
   against synthetic data and a DataLoader on stand-in JPEGs it writes, what `deterministic` costs;
5. `protocol`   `ala_train --preset fmnist_lt_cifar`: the LDAM-DRW CIFAR-10-LT protocol (ResNet-32, 200 epochs,
   batch 128, DRW from 160, evaluation every epoch on the whole test set) with the captured step, its top-1 table
   beside its wall time, the first step (compilation / CUDA-graph capture) apart.

Stages 1-3 are correctness checks and run side by side; 4 and 5 are timings and run alone, after them.
`--cpu` runs the CPU-capable parts at tiny sizes (any machine; a few minutes): the notebooks without their GPU
cells, the GPU tests (skipped there), ala_bench on a ResNet-8 at batch 16, a 1-epoch ResNet-8 protocol run.
"""
import argparse, datetime, json, os, platform, re, shutil, signal, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/'nbs'

def console(name:str, module:str)->list:
    "The console script `name`, or the same entry point through this interpreter when it is not installed."
    exe = shutil.which(name)
    if exe: return [exe]
    return [sys.executable, '-c', f'import sys; from ala_nb.{module} import {name}; sys.exit({name}())']

def run(cmd:list, timeout:float, log:Path, env=None, cwd=ROOT)->dict:
    "Run `cmd` to the end or until `timeout` s (then its whole process group is killed); output to `log`."
    t0 = time.time()
    with open(log, 'w') as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True)
        try: rc, timed_out = p.wait(timeout=max(1., timeout)), False
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL); rc, timed_out = p.wait(), True
    text = log.read_text(errors='replace')
    return dict(cmd=' '.join(map(str, cmd)), rc=rc, timed_out=timed_out, wall_s=round(time.time() - t0, 1),
                log=str(log), tail=text[-3000:])

def start(cmd:list, log:Path, env=None):
    "Start `cmd` in the background (for the stages that run side by side)."
    f = open(log, 'w')
    return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True), f, time.time()

def finish_all(jobs:dict, deadline:float)->dict:
    "Wait for background jobs {name: (cmd, job)}, each timed to its own end; kill what runs past `deadline`."
    res, todo = {}, dict(jobs)
    while todo:
        for name, (cmd, (p, f, t0)) in list(todo.items()):
            rc, timed_out = p.poll(), False
            if rc is None and time.time() < deadline: continue
            if rc is None: os.killpg(p.pid, signal.SIGKILL); rc, timed_out = p.wait(), True
            f.close(); text = Path(f.name).read_text(errors='replace')
            res[name] = dict(cmd=' '.join(map(str, cmd)), rc=rc, timed_out=timed_out, wall_s=round(time.time() - t0, 1),
                             log=f.name, tail=text[-3000:])
            del todo[name]
        time.sleep(0.2)
    return res

def gpu_notebooks()->list:
    "Notebooks with a `#| gpu` cell."
    return sorted(p.name for p in NBS.glob('*.ipynb') if '#| gpu' in p.read_text())

def pytest_counts(text:str)->dict:
    "passed/failed/skipped/... from pytest's summary line."
    tail = text.strip().splitlines()[-1] if text.strip() else ''
    return {k: int(n) for n, k in re.findall(r'(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)', tail)}

def meta(cpu:bool)->dict:
    m = dict(mode='cpu' if cpu else 'gpu', host=platform.node(), python=platform.python_version(),
             started=datetime.datetime.now().astimezone().isoformat(timespec='seconds'), cpu_count=os.cpu_count())
    try:
        import torch, torchvision
        m.update(torch=torch.__version__, torchvision=torchvision.__version__, cuda=torch.version.cuda,
                 cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            m.update(device_name=torch.cuda.get_device_name(0), device_count=torch.cuda.device_count(),
                     device_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
        else: m['device_name'] = 'cpu'
    except Exception as e: m['torch_error'] = f"{type(e).__name__}: {e}"
    try: m['nvidia_smi'] = subprocess.run(['nvidia-smi', '--query-gpu=name,driver_version,memory.total', '--format=csv,noheader'],
                                          capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired): pass
    try: m['git'] = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True, cwd=ROOT,
                                   timeout=10).stdout.strip() + (' +changes' if subprocess.run(
                                       ['git', 'status', '--porcelain'], capture_output=True, text=True, cwd=ROOT,
                                       timeout=10).stdout.strip() else '')
    except (OSError, subprocess.TimeoutExpired): pass
    return m

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--cpu', action='store_true', help='the CPU-capable parts at tiny sizes (no GPU needed)')
    ap.add_argument('--out', default=None, help='the JSON file to write (default: $OUT/device_check.json, else ./device_check.json)')
    ap.add_argument('--budget', type=float, default=None, help='seconds for everything (default: 470 on a GPU, 900 with --cpu)')
    ap.add_argument('--skip', default='', help='comma-separated stages to leave out: notebooks,pytest_gpu,ddp_cudagraphs,bench,protocol')
    a = ap.parse_args(argv)
    cpu = a.cpu
    out = Path(a.out) if a.out else Path(os.environ.get('OUT') or '.')/'device_check.json'
    if out.exists() and out.is_dir(): sys.exit(f"device_check: error: --out {out} is a folder; name a file")
    if not out.parent.is_dir(): sys.exit(f"device_check: error: no folder {out.parent} for {out}")
    skip = {s.strip() for s in a.skip.split(',') if s.strip()}
    stages = ('notebooks', 'pytest_gpu', 'ddp_cudagraphs', 'bench', 'protocol')
    if skip - set(stages): sys.exit(f"device_check: error: unknown --skip {', '.join(sorted(skip - set(stages)))}; choose from {', '.join(stages)}")
    beside = a.out or os.environ.get('OUT')                                  # logs and results beside the JSON, else in /tmp
    work = Path(tempfile.mkdtemp(prefix='device_check_', dir=out.parent if beside else None))
    t_start = time.time(); deadline = t_start + (a.budget or (900. if cpu else 470.))
    left = lambda cap: min(cap, deadline - time.time())
    env = dict(os.environ, PYTHONUNBUFFERED='1', MPLBACKEND='Agg')
    env['PYTHONPATH'] = f"{ROOT}{os.pathsep}{env['PYTHONPATH']}" if env.get('PYTHONPATH') else str(ROOT)
    if cpu: env.setdefault('OMP_NUM_THREADS', '1')
    res = dict(meta=meta(cpu), stages={})
    if not cpu and not res['meta'].get('cuda_available'):
        sys.exit("device_check: error: no CUDA device here; run with --cpu for the CPU-capable parts")
    S = res['stages']
    say = lambda s: print(f"device_check [{time.time() - t_start:5.0f}s]: {s}", flush=True)

    # 1-3: correctness, side by side
    jobs = {}
    nbs = gpu_notebooks()
    if 'notebooks' not in skip:
        nbt = shutil.which('nbdev_test')
        if nbt is None: S['notebooks'] = dict(skipped='nbdev_test is not installed (pip install -e ".[dev]")', notebooks=nbs)
        else:
            cmd = [nbt, '--file_re', '^(' + '|'.join(re.escape(n) for n in nbs) + ')$', '--n_workers', '2' if cpu else '4',
                   '--timing'] + ([] if cpu else ['--flags', 'gpu'])
            jobs['notebooks'] = (cmd, start(cmd, work/'notebooks.log', env))
    if 'pytest_gpu' not in skip:
        cmd = [sys.executable, '-m', 'pytest', 'tests', '-k', 'gpu', '-q', '-rs', '-p', 'no:cacheprovider']
        jobs['pytest_gpu'] = (cmd, start(cmd, work/'pytest_gpu.log', env))
    if 'ddp_cudagraphs' not in skip:
        if cpu: S['ddp_cudagraphs'] = dict(skipped='needs CUDA (NCCL and CUDA graphs)')
        else:
            cmd = [sys.executable, str(ROOT/'bench/ddp_cudagraphs.py'), '--out', str(work/'ddp_cudagraphs.json')]
            jobs['ddp_cudagraphs'] = (cmd, start(cmd, work/'ddp_cudagraphs.log', dict(env, TORCH_LOGS='cudagraphs')))
    say(f"started {', '.join(jobs) or 'nothing'} side by side")
    done = finish_all(jobs, time.time() + left(900. if cpu else 180.))
    for name in jobs:
        r = done[name]
        if name == 'notebooks': r.update(notebooks=nbs, flags='' if cpu else 'gpu')
        if name == 'pytest_gpu': r.update(counts=pytest_counts(Path(r['log']).read_text(errors='replace')))
        if name == 'ddp_cudagraphs':
            text = Path(r['log']).read_text(errors='replace')
            r['log_skip_lines'] = [l.strip()[-300:] for l in text.splitlines() if 'skipping cudagraphs' in l][:20]
            p = work/'ddp_cudagraphs.json'
            if p.is_file():
                r['results'] = json.loads(p.read_text())
                per, cur = {}, None                                  # TORCH_LOGS lines per variant (the probe marks each)
                for l in text.splitlines():
                    if l.startswith('=== variant '): cur = l.split()[2]
                    elif cur and 'skipping cudagraphs' in l: per[cur] = per.get(cur, 0) + 1
                for v in r['results'].get('variants', []):           # torch's counter (what the trainer reads) vs the log
                    v['log_skip_lines'] = per.get(v['variant'], 0)
                    v['detection_agrees'] = (v.get('skips', 0) > 0) == (v['log_skip_lines'] > 0)
        S[name] = r
        say(f"{name}: rc {r['rc']}{' (timed out)' if r['timed_out'] else ''} in {r['wall_s']}s")

    # 4: ala_bench, alone
    if 'bench' not in skip:
        bj = work/'bench.json'
        cmd = console('ala_bench', 'bench_cli') + ['--out', str(bj), '--overwrite', '--parts',
                                                'loss,train,captured,loader,cache,deterministic']
        if cpu: cmd += ['--device', 'cpu', '--steps', '2', '--rounds', '1', '--batch_size', '16', '--arch', 'resnet8',
                        '--workers', '0', '--threads', '1', '--cache_arch', 'resnet8', '--cache_images', '8',
                        '--cache_batch', '4', '--cache_workers', '1']
        else: cmd += ['--device', 'cuda']
        say('ala_bench')
        r = run(cmd, left(600. if cpu else 210.), work/'bench.log', env)
        if bj.is_file(): r['results'] = json.loads(bj.read_text())
        S['bench'] = r
        say(f"bench: rc {r['rc']}{' (timed out)' if r['timed_out'] else ''} in {r['wall_s']}s")

    # 5: the protocol run, alone
    if 'protocol' not in skip:
        rd = work/'protocol_run'
        cmd = console('ala_train', 'train_cli') + ['--preset', 'fmnist_lt_cifar', '--out', str(rd)]
        if cpu: cmd += ['--device', 'cpu', '--epochs', '1', '--arch', 'resnet8', '--n_max', '100', '--max_test', '200',
                        '--threads', '1']
        else: cmd += ['--device', 'cuda']
        say('ala_train --preset fmnist_lt_cifar')
        r = run(cmd, left(600. if cpu else 150.), work/'protocol.log', env)
        r['process_wall_s'] = r['wall_s']
        fj = rd/'final.json'
        if fj.is_file():
            f = json.loads(fj.read_text())
            r['final'] = {k: f.get(k) for k in ('top1', 'wall_s', 'first_step_s', 'train_images_per_s', 'epochs', 'arch',
                                                'device', 'loss', 'drw', 'drw_epoch', 'dataset', 'preset')}
            r['train_and_eval_s'] = f.get('wall_s')
            r['train_and_eval_without_first_step_s'] = round(f.get('wall_s', 0) - (f.get('first_step_s') or 0), 1)
            lines = Path(r['log']).read_text(errors='replace').splitlines()
            k = next((i for i in range(len(lines) - 1, -1, -1) if lines[i].startswith('fmnist_lt_cifar ')), None)
            r['table'] = '\n'.join(lines[k:k + 4]) if k is not None else None
            r['metrics_epochs'] = sum(1 for _ in open(rd/'metrics.jsonl'))
        for f in ('checkpoint.pt', 'checkpoint.prev.pt'): (rd/f).unlink(missing_ok=True)   # keep what comes back small
        S['protocol'] = r
        say(f"protocol: rc {r['rc']}{' (timed out)' if r['timed_out'] else ''} in {r['wall_s']}s")

    res['summary'] = summary(res)
    res['meta']['finished'] = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
    res['meta']['total_wall_s'] = round(time.time() - t_start, 1)
    res['meta']['work_dir'] = str(work)
    tmp = out.with_name(out.name + '.tmp')
    tmp.write_text(json.dumps(res, indent=1, default=str) + '\n'); os.replace(tmp, out)
    print(json.dumps(res['summary'], indent=1))
    say(f"wrote {out} (logs in {work})")
    return 0 if res['summary']['ok'] else 1

def summary(res:dict)->dict:
    "The figures worth reading first, and whether every stage that ran passed."
    S, s = res['stages'], {}
    s['device_name'], s['torch'], s['mode'] = res['meta'].get('device_name'), res['meta'].get('torch'), res['meta']['mode']
    s['stages'] = {k: ('skipped' if 'skipped' in v else 'timed out' if v.get('timed_out') else 'ok' if v.get('rc') == 0
                       else f"failed (rc {v.get('rc')})") for k, v in S.items()}
    s['ok'] = all(v in ('ok', 'skipped') for v in s['stages'].values())
    b = (S.get('bench') or {}).get('results') or {}
    if b.get('train'): s['train_eager_vs_reference'] = b['train']['ratio']
    if b.get('captured'):
        c = b['captured']
        s['train_captured_vs_reference'] = c['ratio']
        s['train_captured_img_s'], s['reference_img_s'] = c['ours_img_s'], c['reference_img_s']
        s['captured_loss_vs_eager_fp32'] = (c.get('equivalence') or {}).get('max_rel_diff')
        s['captured_equivalent'] = (c.get('equivalence') or {}).get('ok')
    if b.get('cache'):
        s['cache_vs_synthetic'], s['cache_vs_dataloader'] = b['cache'].get('cache_vs_synthetic'), b['cache'].get('cache_vs_dataloader')
    if b.get('deterministic'):
        s['deterministic_slowdown'], s['deterministic_reproducible'] = b['deterministic']['slowdown'], b['deterministic']['reproducible']
    if b.get('loss'): s['loss_ala_over_ce'] = {f"{l['B']}x{l['C']}{'/' + l['compile'] if l.get('compile') else ''}": round(l['ratio'], 3) for l in b['loss']}
    p = S.get('protocol') or {}
    if p.get('final'):
        s['protocol'] = dict(top1=p['final']['top1'], wall_s=p['final']['wall_s'], first_step_s=p['final']['first_step_s'],
                             process_wall_s=p['process_wall_s'], epochs=p['final']['epochs'], table=p.get('table'))
    d = (S.get('ddp_cudagraphs') or {}).get('results')
    if d: s['ddp_cudagraph_skips'] = {v['variant']: v.get('skips') for v in d.get('variants', [])}
    return s

if __name__ == '__main__': sys.exit(main())
