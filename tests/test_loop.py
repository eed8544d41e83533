"""ala_nb.loop: the short loop of 03b_loop trains what `train()` trains. On the CPU, on the `fmnist_lt_tiny` preset,
`train_loop(cfg)` ends with the weights (and BatchNorm buffers) of the final checkpoint `train(cfg)` writes, to the
bit: the same data, seeding, model, loss, SGD, schedule, DRW and batch order, and the same operations in the same
order (the full loop's per-epoch evaluation runs in eval mode and draws no random numbers, so it changes neither)."""
import torch
from ala_nb.config import get_config
from ala_nb.runs import CKPT
from ala_nb.checkpoint import read_checkpoint
from ala_nb.train import train
from ala_nb.loop import train_loop


def test_loop_matches_train(tmp_path):
    cfg = get_config('fmnist_lt_tiny', out=str(tmp_path/'run'), device='cpu')
    res = train(cfg)
    assert res['epochs'] == cfg.epochs == 3
    want = read_checkpoint(tmp_path/'run'/CKPT)['model']
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)                    # as `train` runs it (the preset's threads)
    try: net = train_loop(cfg)
    finally: torch.set_num_threads(threads)
    got = net.state_dict()
    assert list(got) == list(want)
    for k, v in want.items(): assert torch.equal(got[k], v), k
