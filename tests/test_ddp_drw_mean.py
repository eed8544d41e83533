"""What DDP trains with DRW's class weights: each rank's weighted mean over its own images, averaged over the ranks
(DDP averages gradients) — not the weighted mean over the whole global batch. Two gloo ranks on the CPU, the ALA loss
with DRW's class-balanced weights on a cosine head."""
import os, socket
import torch, torch.distributed as dist, torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP
from ala_nb.config import get_config
from ala_nb.data import lt_counts
from ala_nb.losses import make_loss
from ala_nb.models import NormedLinear
from ala_nb.step import apply_drw

W, B = 2, 16                                  # ranks, images per rank

def parts():
    "The same loss (DRW on), head, and global batch on every process; rank r takes images r, r+W, ... (DeviceLoader's sharding)."
    counts, cfg = lt_counts(500, 10, 100), get_config('cifar10_lt')
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(W * B, 8, generator=g), torch.randint(0, 10, (W * B,), generator=g)
    lf = make_loss('ala', counts)
    assert apply_drw(lf, cfg, counts, cfg.drw_epoch)
    torch.manual_seed(0)
    return lf, NormedLinear(8, 10), x, y

def _rank(rank, port, out):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=W)
    try:
        lf, net, x, y = parts()
        model = DDP(net)                                                # kept alive until its gradients are reduced
        lf(model(x[rank::W]), y[rank::W]).backward()
        torch.save(net.weight.grad, os.path.join(out, f'grad{rank}.pt'))
    finally: dist.destroy_process_group()

def test_ddp_drw_loss_is_the_mean_of_the_ranks_weighted_means(tmp_path):
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    mp.spawn(_rank, args=(port, str(tmp_path)), nprocs=W)
    g0, g1 = (torch.load(tmp_path/f'grad{r}.pt') for r in range(W))
    torch.testing.assert_close(g0, g1, rtol=0, atol=0)                 # every rank steps with the same gradient ...
    lf, net, x, y = parts()
    (sum(lf(net(x[r::W]), y[r::W]) for r in range(W)) / W).backward()
    torch.testing.assert_close(g0, net.weight.grad)                    # ... that of the mean of the ranks' weighted means
    net.weight.grad = None
    lf(net(x), y).backward()                                           # one process, the whole batch: the global weighted mean
    assert (g0 - net.weight.grad).abs().max() > 1e-2 * net.weight.grad.abs().max()
    w = lf.weight[y]
    assert not torch.isclose(w[0::W].sum(), w[1::W].sum())             # because the ranks' weight sums differ

def test_without_class_weights_the_two_agree():
    "Without DRW (no class weight) every rank's mean is over B images, so the mean of the ranks' means is the global mean."
    lf, net, x, y = parts()
    lf.weight = None
    ranks = sum(lf(net(x[r::W]), y[r::W]) for r in range(W)) / W
    torch.testing.assert_close(ranks, lf(net(x), y))
