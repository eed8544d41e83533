"""pytorch#139207 on this GPU: does `torch.compile(mode='reduce-overhead')` skip CUDA graphs for a model with BatchNorm
under DistributedDataParallel? One process (a one-rank NCCL group), ResNet-8 at batch 128 on 32x32, a few steps of
each variant:

- `no_ddp`           the compiled bare model (the baseline: CUDA graphs expected);
- `ddp`              DDP as `build_run` makes it (`broadcast_buffers=True`, DDPOptimizer's graph split on);
- `no_broadcast`     DDP with `broadcast_buffers=False` (BatchNorm buffers not re-broadcast before every forward);
- `no_optimize_ddp`  DDP with `torch._dynamo.config.optimize_ddp = False` (one graph, no bucket split).

For each: the CUDA-graph skips counted by torch (`ala_nb.build.cudagraph_skips`, what `train` reads to warn) and
images/s. Run with TORCH_LOGS=cudagraphs,perf_hints to have the reasons in the log; each variant's lines follow its
`=== variant NAME ===` marker (`bench/device_check.py` counts them). Writes --out JSON."""
import argparse, json, os, socket, sys, time
import torch, torch.nn.functional as F, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from ala_nb.models import create_model
from ala_nb.build import cudagraph_skips

VARIANTS = ('no_ddp', 'ddp', 'no_broadcast', 'no_optimize_ddp')

def probe(variant:str, steps:int=20, batch:int=128)->dict:
    print(f"=== variant {variant} ===", file=sys.stderr, flush=True)
    torch._dynamo.reset()
    old = torch._dynamo.config.optimize_ddp
    torch._dynamo.config.optimize_ddp = variant != 'no_optimize_ddp'
    try:
        torch.manual_seed(0)
        net = create_model('resnet8', 10, in_chans=3).cuda().to(memory_format=torch.channels_last)
        model = net if variant == 'no_ddp' else DDP(net, device_ids=[0], broadcast_buffers=variant != 'no_broadcast')
        fwd = torch.compile(model, mode='reduce-overhead')
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        g = torch.Generator(device='cuda').manual_seed(0)
        x = torch.randn(batch, 3, 32, 32, device='cuda', generator=g).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch,), device='cuda', generator=g)
        def step():
            torch.compiler.cudagraph_mark_step_begin()
            loss = F.cross_entropy(fwd(x).float(), y)
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        s0, t0 = cudagraph_skips(), time.perf_counter()
        for _ in range(3): step()
        torch.cuda.synchronize(); first_s = time.perf_counter() - t0
        t = time.perf_counter()
        for _ in range(steps): step()
        torch.cuda.synchronize()
        return dict(variant=variant, skips=cudagraph_skips() - s0, img_s=round(steps * batch / (time.perf_counter() - t), 1),
                    compile_s=round(first_s, 1))
    except Exception as e:
        return dict(variant=variant, error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500])
    finally: torch._dynamo.config.optimize_ddp = old

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', required=True); ap.add_argument('--steps', type=int, default=20)
    ap.add_argument('--variants', default=','.join(VARIANTS))
    a = ap.parse_args()
    if not torch.cuda.is_available(): sys.exit("ddp_cudagraphs: error: needs CUDA")
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK='0', WORLD_SIZE='1', LOCAL_RANK='0')
    torch.cuda.set_device(0)
    dist.init_process_group('nccl', rank=0, world_size=1, device_id=torch.device('cuda', 0))
    res = []
    def save():                                           # after every variant, atomically: a kill keeps what ran
        out = dict(torch=torch.__version__, device_name=torch.cuda.get_device_name(0), world_size=1, variants=res,
                   done=len(res) == len(a.variants.split(',')),
                   note="one rank: DDP's wrapping and DDPOptimizer's split happen as with several; what a second rank adds "
                        "(the all-reduce itself) is outside the graphs either way")
        tmp = f'{a.out}.{os.getpid()}.tmp'
        with open(tmp, 'w') as f: json.dump(out, f, indent=1); f.flush(); os.fsync(f.fileno())
        os.replace(tmp, a.out)
        return out
    out = save()
    try:
        for v in a.variants.split(','): res.append(probe(v, a.steps)); out = save()
    finally: dist.destroy_process_group()
    print(json.dumps(out, indent=1))

if __name__ == '__main__': main()
