"""The markdown table of a run: the machine and its peak, then one table per part."""
import math

from .plan import PARTS

MEMORY = [("peak MB", "peak_mb"), ("Δ MB", "peak_delta_mb")]
FLOPS = [("GFLOP", "gflop"), ("GFLOP/s", "gflops_per_s"), ("of peak", "peak_fraction")]
CONFIG = [("config", "config")]
COLUMNS = {
    "ref": [("measurement", "name"), *CONFIG, ("batch", "batch"), ("ganinv s", "seconds"), ("official s", "official_s"),
            ("speed-up", "speedup"), ("best speed-up", "best_speedup"), ("max diff", "max_diff"), *FLOPS, *MEMORY],
    "methods": [("method", "name"), *CONFIG, ("batch", "batch"), ("s / it", "seconds"), ("it/s", "rate"), *FLOPS,
                *MEMORY],
    "inference": [("encoder", "name"), *CONFIG, ("batch", "batch"), ("s / batch", "seconds"), ("img/s", "rate"),
                  *FLOPS, *MEMORY],
    "optimization": [("run", "name"), *CONFIG, ("images", "batch"), ("s / step", "seconds"), ("steps/s", "rate"),
                     *FLOPS, *MEMORY],
    "ddp": [("processes", "processes"), ("batch / process", "batch_per_process"), ("s / it", "seconds"),
            ("it/s", "rate"), ("img/s (all)", "images_per_s"), ("efficiency", "efficiency")],
}
TITLES = {"ref": "Reference configuration (nets + losses, no Lightning)", "methods": "Training (Lightning methods)",
          "inference": "Encoder inference", "optimization": "Optimisation inversion",
          "ddp": "DDP scaling: pSp 64 px, gloo, 1 CPU thread per process"}
NOTES = {  # below the tables: the first for every run, the others where their part has rows
    None: "Batch 4 unless stated; times are medians over repeats after warm-up; peak MB is the measuring process's "
          "max RSS (incl. ~0.7-1 GB of torch/Lightning libraries) or CUDA max allocated; Δ MB is the peak above the "
          "level before ganinv's nets were built. GFLOP: one call under torch.utils.flop_counter.FlopCounterMode "
          "(Trainer rows: the first, untimed step); of peak = GFLOP/s ÷ the machine's peak for the row's precision "
          "(fp32 sgemm or bf16 matmul 2048², the larger of the before/after measurements).",
    "ref": "Reference rows: LPIPS-alex on a random AlexNet trunk (same architecture and cost as the ImageNet one); "
           "e4e step = encoder update at stage 'all', loss MSE + 0.8·LPIPS, Ranger, G frozen, no latent "
           "discriminator. Official = the official rosinality / e4e modules from --official DIR, run in the same "
           "process as ganinv's, same weights and inputs, repeats interleaved; always fp32 NCHW on its CPU-native "
           "op path, as its users run it (config = ganinv's side). speed-up = official s / ganinv s of this run; "
           "best speed-up = fastest official / fastest ganinv repeat; max diff = max |official - ganinv| image "
           "difference of one fp32 call with constant noise. — = measured without --official (no stored official "
           "times are used).",
    "methods": "Methods: e4e at stage 'all' with its latent discriminator; loss=embedded (LPIPS random trunk, no ID "
               "loss); 256 px = Generator(256, 512, 8, 2) random + IR-SE50 encoder (conf/encoder/checkpoint.yaml, "
               "random init); GFLOP for pSp only (FlopCounterMode fails inside the R1 penalties' autograd.grad).",
    "ddp": "DDP efficiency = 2-process img/s / (2 × 1-process img/s), same per-process batch.",
}


def fmt(x, digits=3):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"


def cell(row, field):
    if field == "config":
        precision = "fp32" if row["precision"] == "32" else row["precision"]
        return (f"{row['device']} {precision}" + (" NHWC" if row.get("layout") == "nhwc" else "")
                + (" THP off" if row.get("thp") == "off" else ""))
    if field == "gflop":
        return fmt(row["flops"] / 1e9) if row.get("flops") else "—"
    v = row.get(field)
    if v is None:
        return "—"
    if field in ("speedup", "best_speedup"):
        return f"{v:.2f}×"
    if field == "peak_fraction":
        return f"{100 * v:.0f}%"
    if field == "max_diff":
        return f"{v:.1e}"
    if field in ("peak_mb", "peak_delta_mb"):
        return f"{v:.0f}"
    if isinstance(v, float):
        return fmt(v)
    return str(v)


def peak_lines(result):
    """One line per device: fp32 sgemm and bf16 matmul GFLOP/s before and (once measured) after the rows."""
    threads = result["machine"]["threads"]
    if "sgemm_gflops" in result:  # JSON written before the side-by-side runs: fp32 sgemm only
        b, a = result["sgemm_gflops"]
        return [f"Machine speed: fp32 sgemm 2048² on {threads} threads {b:.0f} GFLOP/s before, {a:.0f} after "
                "(no bf16 peak recorded)."]
    before, after = result["peak"]
    lines = []
    for device, b in before.items():
        a = after.get(device)
        fp32 = f"{b['fp32']:.0f} GFLOP/s before" + (f", {a['fp32']:.0f} after" if a else "")
        if b.get("bf16") is None:
            bf16 = "not measured (no native bf16 on this device)"
        else:
            bf16 = f"{b['bf16']:.0f} GFLOP/s before" + (f", {a['bf16']:.0f} after" if a else "")
        lines.append(f"Machine peak ({device}, {threads} threads, 2048² matmul): fp32 sgemm {fp32}; "
                     f"bf16 matmul {bf16}.")
    return lines


def markdown(result):
    m = result["machine"]
    quick = " (--quick)" if result.get("quick") else ""
    lines = [f"## ganinv speed{quick} — {m['cpu']} ({m['cpu_count']} cores), {m['threads']} threads"
             + (f", {m['gpu']}" if "gpu" in m else "") + f", torch {m['torch']}, Lightning {m['lightning']}", ""]
    if "peak" in result or "sgemm_gflops" in result:
        lines += [*peak_lines(result), ""]
    if result.get("official"):
        lines += [f"Official code: {result['official']} (side by side, same process).", ""]
    for part in PARTS:
        rows = [r for r in result["rows"] if r.get("section") == part]
        if not rows:
            continue
        cols = COLUMNS[part]
        lines += [f"### {TITLES[part]}", "", "| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r.get('name', r.get('processes'))} | failed: {r['error'][:200]} |")
            else:
                lines.append("| " + " | ".join(cell(r, f) for _, f in cols) + " |")
        lines.append("")
    sections = {r.get("section") for r in result["rows"]}
    return "\n".join(lines + [note for part, note in NOTES.items() if part is None or part in sections])
