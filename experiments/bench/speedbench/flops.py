"""FLOPs of one call, as ``torch.utils.flop_counter.FlopCounterMode`` counts them (matmuls and
convolutions, forward and backward; a multiply-add is 2 FLOPs)."""
from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn):
    """Run ``fn`` once under FlopCounterMode -> its FLOPs (an untimed call)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()
