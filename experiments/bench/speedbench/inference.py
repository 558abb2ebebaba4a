"""Part ``inference``: encoder images/s at batch 1 and 8 (pSp, e4e, IDInvert encoders; e4e also with
the generator: the whole image -> reconstruction), eval mode, no grad; at 64 px the embedded G and
encoder config, at other sizes Generator(S, 512, 8, 2) random and the checkpoint encoder config."""
import torch

from .build import BIG, autocast, encoder_kwargs, make_encoder, make_generator, nhwc, nhwc_input, random_images
from .flops import count_flops
from .timing import time_calls

ROWS = (("psp", False), ("e4e", False), ("idinvert", False), ("e4e", True))  # (encoder, with G.synthesis)


def nets(size):
    """(generator, encoder) spec entries: 'embedded' at 64 px, else Generator(size, 512, 8, 2) and the
    checkpoint encoder config (IR-SE50, 512-wide heads) at that input size."""
    if size == 64:
        return "embedded", "embedded"
    return dict(size=size, **BIG), {**encoder_kwargs({"encoder": "checkpoint"}), "input_size": size}


def specs(sizes, add):
    for s in sizes:
        gen, enc = nets(s)
        for b in (1, 8):
            for m, decode in ROWS:
                what = f"{m} E + G" if decode else f"{m} E"
                add("inference", f"inference/{m}{'_eg' if decode else ''}_{s}_b{b}", f"{what} {s} px", "encode", s,
                    batch=b, unit="img/s", generator=gen, encoder=enc, encoder_kind=m, decode=decode)


def run_encode(spec, device):
    """spec['encoder_kind'] in psp | e4e | idinvert; spec['decode'] also runs G.synthesis."""
    g = make_generator(spec, device).requires_grad_(False)
    enc = make_encoder(spec["encoder_kind"], spec, g, device).eval()
    nhwc(spec, g, enc)
    x = nhwc_input(spec, random_images(spec["batch"], g.size, device))

    def infer():
        with torch.no_grad(), autocast(spec, device):
            codes = enc(x)
            if spec.get("decode"):
                g.synthesis(codes, noise_mode="const")
    flops = count_flops(infer)
    return {"times_s": time_calls(infer, spec["warmup"], spec["repeats"], device), "flops": flops}


KINDS = {"encode": run_encode}
