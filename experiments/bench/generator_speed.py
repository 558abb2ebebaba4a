"""Generator forward and forward+backward time on CPU (fp32), printed as a markdown table.

    python experiments/bench/generator_speed.py [--sizes 64 256] [--batch 4] [--threads 2] [--repeats 3]

Reference configuration: Generator(size, 512, n_mlp=8, channel_multiplier=2), const noise.
"""
import argparse
import json
import platform
import time

import torch

from ganinv.nets.stylegan2 import Generator


def timed(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for size in args.sizes:
        torch.manual_seed(0)
        g = Generator(size, 512, 8, channel_multiplier=2)
        ws = g.broadcast(g.mapping(torch.randn(args.batch, 512))).detach()

        def fwd(g=g, ws=ws):
            with torch.no_grad():
                g.synthesis(ws)

        def fwd_bwd(g=g, ws=ws):
            g.zero_grad(set_to_none=True)
            w = ws.clone().requires_grad_(True)
            g.synthesis(w).square().mean().backward()

        rows.append({"size": size, "batch": args.batch, "forward_ms": timed(fwd, args.repeats),
                     "forward_backward_ms": timed(fwd_bwd, args.repeats)})
    cpu = platform.processor() or platform.machine()
    print(f"Generator speed, CPU fp32, {args.threads} threads, torch {torch.__version__}, {cpu}\n")
    print("| size | batch | forward (ms) | forward+backward (ms) |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['batch']} | {r['forward_ms']:.0f} | {r['forward_backward_ms']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
