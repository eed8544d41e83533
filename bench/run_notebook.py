"""Run a notebook's code cells the way `nbdev_test` does, without nbdev (the GPU node has no nbdev, IPython or jedi).

    python bench/run_notebook.py nbs/05_captured.ipynb [--flags gpu]

Like `nbdev_test`: the cells run in order in one namespace, with the notebook's folder as the working folder; a cell
whose directives name a test flag (`#| slow`, `#| gpu`, the `tst_flags` of settings.ini) runs only when `--flags`
names it; `#| eval: false` cells and notebooks with `#| skip_exec` are left out. The project's notebooks use no
IPython magics or display hooks (checked: a line starting with `%` or `!` is refused, not guessed at). `--upto gpu`
stops after the last `#| gpu` cell: what follows cannot matter to the GPU cells (00a_losses ends with an ipywidgets
demo, which the node does not have; CI runs those cells). Exit 0 when
every cell ran, 1 naming the failing cell (its index and first line) with its traceback.
"""
import argparse, configparser, json, os, re, sys, time, traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def test_flags()->set:
    "The `tst_flags` of settings.ini (e.g. {'slow', 'gpu'})."
    c = configparser.ConfigParser(); c.read(ROOT/'settings.ini')
    return set(c.get('DEFAULT', 'tst_flags', fallback='').split())

def directives(src:str)->dict:
    "`#| name args` lines at the top of a cell, as {name: args}."
    out = {}
    for line in src.splitlines():
        s = line.strip()
        if not s: continue
        if not s.startswith('#|'): break
        name, _, args = s[2:].strip().partition(' ')
        name, _, args2 = name.partition(':')
        out[name.strip()] = (args2 or args).strip()
    return out

def cells_to_run(nb:dict, flags:set, upto:str=None)->list:
    "[(index, source)] of the code cells `nbdev_test --flags ...` would run (up to the last cell flagged `upto`)."
    tst, out = test_flags(), []
    code = [c for c in nb['cells'] if c['cell_type'] == 'code']
    if upto:
        last = [i for i, c in enumerate(code) if upto in directives(''.join(c['source']))]
        code = code[:last[-1] + 1] if last else code
    if any('skip_exec' in directives(''.join(c['source'])) for c in code): return []
    for i, c in enumerate(code):
        src = ''.join(c['source']); d = directives(src)
        if d.get('eval', '').lower() == 'false': continue
        if any(f in d and f not in flags for f in tst): continue
        bad = [l for l in src.splitlines() if l.lstrip().startswith(('%', '!'))]
        if bad: raise SystemExit(f"run_notebook: error: cell {i} has IPython syntax {bad[0]!r}; run it with nbdev_test")
        out.append((i, src))
    return out

def main(argv=None)->int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('notebook'); ap.add_argument('--flags', default='', help='test flags to run, e.g. gpu')
    ap.add_argument('--upto', default=None, help='stop after the last cell with this flag, e.g. gpu')
    a = ap.parse_args(argv)
    path = Path(a.notebook).resolve()
    cells = cells_to_run(json.loads(path.read_text()), set(a.flags.replace(',', ' ').split()), a.upto)
    os.chdir(path.parent); sys.path.insert(0, str(path.parent))
    ns = dict(__name__='__main__', __file__=str(path))
    t0 = time.time()
    for i, src in cells:
        try: exec(compile(src, f'{path.name}[cell {i}]', 'exec'), ns)
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt): raise
            first = next((l for l in src.splitlines() if l.strip() and not l.startswith('#|')), '')
            print(f"run_notebook: {path.name}: cell {i} failed ({first[:80]!r}):", file=sys.stderr)
            traceback.print_exc()
            return 1
    print(f"run_notebook: {path.name}: {len(cells)} cells ran in {time.time() - t0:.1f}s (flags: {a.flags or 'none'})")
    return 0

if __name__ == '__main__': sys.exit(main())
