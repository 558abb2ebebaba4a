"""ganinv's speed benchmark, one module per part (entry point: ``experiments/bench/speed.py``).

- ``cli``: the command line and the run (peaks, rows, table, JSON).
- ``plan``: which measurements a command asks for (specs), over devices, precisions, layouts, THP.
- ``ref``, ``methods``, ``inference``, ``optimization``, ``ddp``: the five parts' specs and measurements.
- ``official``: the official rosinality / e4e modules from ``--official DIR``, side by side with ganinv's.
- ``build``: nets, inputs, Trainers and train.py configs the parts measure.
- ``timing``: timed calls (alone or interleaved with the official ones) and the Trainer step timer.
- ``machine``: the machine (CPU, versions) and its peak (fp32 sgemm, bf16 matmul GFLOP/s).
- ``flops``: FLOPs of one call from ``torch.utils.flop_counter.FlopCounterMode``.
- ``measure``: one spec -> one row, in this process or a fresh subprocess; speed-up and fraction of peak.
- ``report``: the markdown table.
"""
