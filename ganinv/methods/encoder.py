"""What pSp, e4e and IDInvert share: image -> encoder -> (+ latent_avg) -> generator, the
reconstruction losses, validation metrics, image grids and the official-layout export."""
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from ..checkpoints.safe import load_torch, save_atomic
from ..losses import IDLoss, MocoLoss, w_norm
from ..metrics.image import id_similarity
from ..nets.encoder_init import init_encoder
from .base import check_precision, log_grid, offset_seed_by_rank, rng_state, set_rng_state

PSP_CROP = (35, 223, 32, 220)  # pSp's face crop on 256 px images (ID and *_crop losses)
# e4e training/coach.py forward, dataset_type cars_encode: y_hat[:, :, 32:224, :] of the
# 256x256 face_pool output (512x384 cars inside the 512x512 frame, seen at 192x256).
CARS_ROWS = (32, 224)
CROPPED_DATASETS = ("cars_encode",)
# The official pSp/e4e/ReStyle opts keys the official loaders read that this model determines
# (tests/test_export_opts.py lists, per key, the official file that reads it); export_opts gives the rest.
MODEL_OPTS = ("dataset_type", "encoder_type", "input_nc", "label_nc", "output_size", "stylegan_size",
              "n_styles", "start_from_latent_avg", "learn_in_w", "checkpoint_path", "device")


def crop_face(img):
    """pSp's [35:223, 32:220] crop, scaled to the image size: [B, C, H, W] -> [B, C, h, w]."""
    h, w = img.shape[-2:]
    t, b, l, r = PSP_CROP
    return img[:, :, t * h // 256:b * h // 256, l * w // 256:r * w // 256]


def cars_crop(img):
    """e4e's cars crop ``y_hat[:, :, 32:224, :]`` of a W x W image, rows scaled by W/256 (exactly the
    official indexing at W = 256): [B, C, W, W] -> [B, C, 3W/4, W]."""
    w = img.shape[-1]
    top, bottom = CARS_ROWS
    return img[:, :, top * w // 256:bottom * w // 256, :]


def input_display(x, label_nc=0):
    """Encoder inputs as 3-channel images for grids: RGB (and RGB + mask) as they are, 1-channel
    sketches / grayscale repeated, one-hot label maps (label_nc > 1) as their class index in grey."""
    if label_nc > 1:
        return (x.argmax(1, keepdim=True).float() / (label_nc - 1) * 2 - 1).expand(-1, 3, -1, -1)
    return x[:, :3] if x.shape[1] >= 3 else x[:, :1].expand(-1, 3, -1, -1)


class EncoderMethod(pl.LightningModule):
    """Encoder-based inversion: ``codes = E(x) (+ latent_avg)``, ``y_hat = G.synthesis(codes)``.

    Batches are dicts with ``x`` (encoder input [B, input_nc, H, W]) and ``y`` (target image
    [B, 3, H, W] in [-1, 1]). Generator outputs larger than the target are average-pooled to
    it (pSp's ``face_pool``). Loss weights follow the official option names (``*_lambda``);
    a weight of 0 skips the loss and never builds its network.
    Each argument is described where it is declared in ``__init__``.
    """

    def __init__(
        self,
        # Networks and codes.
        generator,                      # StyleGAN2 generator: y_hat = G.synthesis(codes); frozen unless train_decoder
        encoder,                        # x [B, input_nc, H, W] -> W+ [B, n_latent, D] (or one w [B, D], broadcast)
        start_from_latent_avg=True,     # add latent_avg [n_latent, D] to E(x) (G's, else the mean of mapped z)
        train_decoder=False,            # also train the generator (official --train_decoder)
        # Optimiser.
        lr=1e-4,                        # learning rate (official 1e-4)
        optimizer="ranger",             # 'ranger' (pSp/e4e, official optim_name) or 'adam' (torch defaults)
        # Reconstruction loss weights, official names (pSp FFHQ: l2 1, lpips 0.8, id 0.1), and their networks.
        l2_lambda=1.0,                  # MSE(y_hat, y)
        lpips_lambda=0.8,               # LPIPS(y_hat, y); needs lpips
        id_lambda=0.0,                  # ArcFace ID loss 1 − cos (IDLoss of id_weights)
        moco_lambda=0.0,                # MoCo-v2 ResNet-50 1 − cos (MocoLoss of moco_weights)
        w_norm_lambda=0.0,              # pSp WNormLoss Σ_b ‖w_b − latent_avg‖ / B
        l2_lambda_crop=0.0,             # MSE on pSp's [35:223, 32:220] face crop (scaled to the image size)
        lpips_lambda_crop=0.0,          # LPIPS on that crop; needs lpips
        lpips=None,                     # LPIPSLoss network (the LPIPS terms and val/lpips)
        id_weights=None,                # ArcFace IR-SE50 weights file (model_ir_se50.pth) for id_lambda
        moco_weights=None,              # MoCo-v2 weights file for moco_lambda
        # Generator noise and bookkeeping.
        train_noise_mode="random",      # G's noise in training (official randomize_noise=True); validation: 'const'
        image_every=250,                # train input / reconstruction / target grid every this many steps; 0 never
        n_mean_latent=10000,            # mapped z averaged for latent_avg when the generator has none
        # Initialisation, fine-tuning and export.
        encoder_init="none",            # the new encoder's initialisation (see ganinv.nets.encoder_init): 'irse50'
                                        #   (official: pSp's load_weights of encoder_init_weights),
                                        #   'resnet34_imagenet' (ReStyle's ResNet-34) or 'none'
        encoder_init_weights=None,      # weights file of encoder_init (irse50: model_ir_se50.pth)
        label_nc=0,                     # pSp label_nc: != 0 keeps the input layer out of the irse50 init; > 1 shows
                                        #   inputs as class maps in grids
        init_from=None,                 # fine-tuning (official --checkpoint_path): the encoder, decoder and
                                        #   latent_avg of an official pSp/e4e .pt or a ganinv export (load_init_from),
                                        #   replacing encoder_init; optimizers start fresh at step 0, unlike resume
                                        #   (the exact continuation of a run)
        dataset_type="ffhq_encode",     # official option, written to the export's opts (read by the official
                                        #   inference scripts); 'cars_encode' also applies e4e's cars crop (cars_crop)
        export_opts=None,               # further official opts written to the export as given (e.g. test_batch_size,
                                        #   resize_factors, stylegan_weights; see official_opts); MODEL_OPTS keys, set
                                        #   from the model, are refused
    ):
        super().__init__()
        fixed = sorted(set(export_opts or {}) & set(MODEL_OPTS))
        if fixed:
            raise ValueError(f"method.export_opts.{fixed[0]}: set from the model, not configurable")
        # logger=False: train.py logs the whole resolved config once
        self.save_hyperparameters(ignore=["generator", "encoder", "lpips"], logger=False)
        self.generator = generator
        self.generator.requires_grad_(train_decoder)
        self.encoder = encoder
        if init_from is None:
            init_encoder(encoder, encoder_init, encoder_init_weights, label_nc)
        if generator.latent_avg is not None:
            avg = generator.latent_avg.reshape(-1, generator.style_dim)[-1]
        else:
            avg = generator.mean_latent(n_mean_latent, seed=0)[0]
        self.register_buffer("latent_avg", avg.expand(generator.n_latent, -1).clone())
        # the file's latent D, if it has one (official training checkpoints); E4E loads it
        self.init_latent_discriminator = None
        if init_from is not None:
            self.init_latent_discriminator = self.load_init_from(init_from).get("discriminator_state_dict")
        needs_lpips = lpips_lambda > 0 or lpips_lambda_crop > 0
        if needs_lpips and lpips is None:
            raise ValueError("method: lpips_lambda > 0 needs a loss.lpips network")
        self.lpips = lpips
        self.id_loss = IDLoss(id_weights) if id_lambda > 0 else None
        self.moco_loss = MocoLoss(moco_weights) if moco_lambda > 0 else None
        self.val_metrics = nn.ModuleDict({
            "psnr": torchmetrics.image.PeakSignalNoiseRatio(data_range=1.0),
            "ssim": torchmetrics.image.StructuralSimilarityIndexMeasure(data_range=1.0),
            "mse": torchmetrics.MeanMetric(),
        })
        if self.lpips is not None:
            self.val_metrics["lpips"] = torchmetrics.MeanMetric()
        if self.id_loss is not None:  # ArcFace similarity, as pSp/e4e report it
            self.val_metrics["id"] = torchmetrics.MeanMetric()

    def load_init_from(self, path):
        """Load a trained pSp/e4e checkpoint to fine-tune from, as the official ``load_weights``
        with ``checkpoint_path``: ``state_dict`` ``encoder.*`` into the encoder and ``decoder.*``
        into the generator (strict), ``latent_avg`` ([n_styles, D] or [D]). Returns the file's dict."""
        ckpt = load_torch(path, "init_from checkpoint", "an official pSp/e4e .pt or a ganinv export/<method>.pt")
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
            raise ValueError(f"init_from {path}: not a pSp/e4e checkpoint (expected a dict with 'state_dict' "
                             "holding encoder.* / decoder.*)")
        parts = {"encoder.": {}, "decoder.": {}}
        for key, value in ckpt["state_dict"].items():
            for prefix, part in parts.items():
                if key.startswith(prefix):
                    part[key[len(prefix):]] = value
        for prefix, module in (("encoder.", self.encoder), ("decoder.", self.generator)):
            if not parts[prefix] and prefix == "encoder.":
                raise ValueError(f"init_from {path}: its state_dict has no encoder.* entries")
            if parts[prefix]:
                try:
                    module.load_state_dict(parts[prefix], strict=True, assign=True)  # the file's tensors
                except RuntimeError as e:
                    first = str(e).strip().splitlines()[1:2] or [str(e)]
                    raise ValueError(f"init_from {path}: {prefix.rstrip('.')} does not match the configured "
                                     f"architecture ({first[0].strip()})") from None
        avg = ckpt.get("latent_avg")
        if avg is not None:
            avg = avg.reshape(-1, self.latent_avg.shape[-1])
            if avg.shape[0] not in (1, self.latent_avg.shape[0]):
                raise ValueError(f"init_from {path}: latent_avg has {avg.shape[0]} rows, expected 1 or "
                                 f"{self.latent_avg.shape[0]}")
            self.latent_avg.copy_(avg.expand_as(self.latent_avg))
        return ckpt

    # -- inversion ----------------------------------------------------------------------
    def encode(self, x):
        """x [B, input_nc, H, W] -> W+ codes [B, n_latent, D] (latent_avg added if configured)."""
        codes = self.encoder(x)
        if codes.ndim == 2:  # learn_in_w encoders predict one w
            codes = self.generator.broadcast(codes)
        if self.hparams.start_from_latent_avg:
            codes = codes + self.latent_avg
        return codes

    def decode(self, codes, noise_mode="const", size=None):
        """W+ codes -> images [B, 3, S, S], pooled to ``size`` when the generator is larger
        (pSp's ``face_pool``). ``cars_encode``: pooled to W x W, then :func:`cars_crop`."""
        img = self.generator.synthesis(codes, noise_mode=noise_mode)
        if size is not None and self.hparams.dataset_type in CROPPED_DATASETS:
            w = size[-1]
            img = cars_crop(F.adaptive_avg_pool2d(img, (w, w)) if img.shape[-2:] != (w, w) else img)
        if size is not None and tuple(img.shape[-2:]) != tuple(size):
            img = F.adaptive_avg_pool2d(img, size)
        return img

    def forward(self, x):
        return self.decode(self.encode(x), size=x.shape[-2:])

    # -- losses -------------------------------------------------------------------------
    def reconstruction_loss(self, x, y, y_hat, codes, loss=None, logs=None):
        """pSp ``calc_loss``: weighted ID, L2, LPIPS, crop variants, w-norm and MoCo, added in
        the official order onto ``loss`` (e4e's coach adds its adversarial and delta terms
        first). Logs use the official ``loss_dict`` keys (``loss_id``, ``id_improve``, ...)."""
        hp = self.hparams
        loss = y_hat.new_zeros(()) if loss is None else loss
        logs = {} if logs is None else logs

        def add(name, weight, value):
            nonlocal loss
            loss = loss + value * weight
            logs[name] = value.detach()

        if hp.id_lambda > 0:
            loss_id, logs["id_improve"], _ = self.id_loss(y_hat, y, x)
            add("loss_id", hp.id_lambda, loss_id)
        if hp.l2_lambda > 0:
            add("loss_l2", hp.l2_lambda, F.mse_loss(y_hat, y))
        if hp.lpips_lambda > 0:
            add("loss_lpips", hp.lpips_lambda, self.lpips(y_hat, y))
        if hp.lpips_lambda_crop > 0:
            add("loss_lpips_crop", hp.lpips_lambda_crop, self.lpips(crop_face(y_hat), crop_face(y)))
        if hp.l2_lambda_crop > 0:
            add("loss_l2_crop", hp.l2_lambda_crop, F.mse_loss(crop_face(y_hat), crop_face(y)))
        if hp.w_norm_lambda > 0:
            add("loss_w_norm", hp.w_norm_lambda, w_norm(codes, self.latent_avg))
        if hp.moco_lambda > 0:
            loss_moco, logs["id_improve"], _ = self.moco_loss(y_hat, y, x)
            add("loss_moco", hp.moco_lambda, loss_moco)
        return loss, logs

    def invert_batch(self, batch, noise_mode):
        x, y = batch["x"], batch["y"]
        codes = self.encode(x)
        return x, y, codes, self.decode(codes, noise_mode=noise_mode, size=y.shape[-2:])

    # -- validation / test --------------------------------------------------------------
    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, batch_idx, "test")

    @torch.no_grad()
    def _evaluate(self, batch, batch_idx, stage):
        x, y, codes, y_hat = self.invert_batch(batch, noise_mode="const")
        loss, logs = self.reconstruction_loss(x, y, y_hat, codes)
        y01, yh01 = (y.clamp(-1, 1) + 1) / 2, (y_hat.clamp(-1, 1) + 1) / 2
        m = self.val_metrics
        m["psnr"](yh01, y01)
        m["ssim"](yh01, y01)
        m["mse"](F.mse_loss(y_hat, y, reduction="none").mean((1, 2, 3)))
        if "lpips" in m:
            m["lpips"](self.lpips(y_hat, y, per_image=True))
        if "id" in m:
            m["id"](id_similarity(y_hat, y, self.id_loss))
        self.log_dict({f"{stage}/{k}": v for k, v in m.items()}, on_epoch=True, sync_dist=True)
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True)
        if batch_idx == 0:
            rows = [input_display(x, self.hparams.label_nc), y_hat, y]
            log_grid(self, f"{stage}/input_recon_target", [r[:8] for r in rows])

    def log_train(self, logs, x, y, y_hat):
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, prog_bar=False)
        every = self.hparams.image_every
        if every and self.global_step % every == 0:
            log_grid(self, "train/input_recon_target", [input_display(x[:4], self.hparams.label_nc),
                                                        y_hat[:4], y[:4]])

    # -- optimisation -------------------------------------------------------------------
    def setup(self, stage):
        check_precision(self.trainer)
        offset_seed_by_rank(self.trainer)

    def trainable_parameters(self):
        params = list(self.encoder.parameters())
        if self.hparams.train_decoder:
            params += list(self.generator.parameters())
        return params

    def on_train_epoch_start(self):
        # Frozen nets stay in eval mode (BatchNorm statistics of a frozen G/ID net must not move).
        if not self.hparams.train_decoder:
            self.generator.eval()

    # -- resume -------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint):
        checkpoint["rng"] = rng_state()

    def on_load_checkpoint(self, checkpoint):
        set_rng_state(checkpoint.get("rng"))

    # -- export -------------------------------------------------------------------------
    def official_opts(self):
        """The official ``opts`` dict (pSp/e4e/ReStyle key names) describing this model: the keys
        of :data:`MODEL_OPTS` from the model (``device`` 'cuda:0' as the official coaches store it;
        ``checkpoint_path`` is ``init_from``, which the official loaders replace by the file's own
        path), the loss weights, ``export_opts``, and ganinv's architecture keys."""
        g, hp = self.generator, self.hparams
        opts = {
            "dataset_type": hp.dataset_type, "encoder_type": type(self.encoder).__name__,
            "input_nc": getattr(self.encoder, "input_nc", 3), "label_nc": hp.label_nc,
            "output_size": g.size, "stylegan_size": g.size, "n_styles": g.n_latent,
            "start_from_latent_avg": bool(hp.start_from_latent_avg),
            "learn_in_w": bool(getattr(self.encoder, "learn_in_w", False)),
            "checkpoint_path": hp.init_from, "device": "cuda:0",
            **{k: v for k, v in hp.items() if "_lambda" in k},
            "learning_rate": hp.lr, "optim_name": hp.optimizer, "train_decoder": bool(hp.train_decoder),
            **dict(hp.export_opts or {}),
            "encoder_num_layers": getattr(self.encoder, "num_layers", 50),
            "encoder_mode": getattr(self.encoder, "mode", "ir_se"),
            "generator": {"size": g.size, "style_dim": g.style_dim, "n_mlp": g.n_mlp,
                          "channel_multiplier": g.channel_multiplier, "channel_max": g.channel_max},
        }
        return opts

    def export(self, path):
        """Write the official pSp/e4e checkpoint layout: ``state_dict`` (``encoder.*``,
        ``decoder.*``), ``latent_avg`` ([n_styles, D]; [1, D] for ``learn_in_w``, as pSp saves
        it) and ``opts``."""
        state = {f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}
        state.update({f"decoder.{k}": v for k, v in self.generator.state_dict().items()})
        opts = self.official_opts()
        avg = self.latent_avg[:1] if opts["learn_in_w"] else self.latent_avg
        save_atomic({"state_dict": state, "latent_avg": avg.clone(), "opts": opts}, path)
