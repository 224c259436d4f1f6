"""Image models on the same training loop as the language models: a diffusion model that draws
8x8 digits, and a vision transformer that reads them.

    python -m training.images --task generate --json gen.json [--samples s.npy] [--grid g.png]
    python -m training.images --task classify --json vit.json

Both use scikit-learn's 1,797 8x8 digit images (pixel values 0-16) with the project's fixed
stratified split (scratch/nn's: 1,438 training images, 359 test images), and the loop of
training/pretrain.py: a batch of data, a loss, gradients, an AdamW step, a warm-up and cosine
learning-rate schedule. Only the objective changes:

- generate: diffusers' `UNet2DModel` learns to predict the noise that `DDPMScheduler` added to a
  training image at a random step t (mean squared error). To draw, the scheduler starts from pure
  noise and removes the predicted noise step by step (an exponential moving average of the
  weights, diffusers' `EMAModel`, does the drawing). A digits classifier trained here on the
  training split (scikit-learn's `SVC`, probabilities by Platt scaling) then reads 100 drawings:
  `digit_likeness` is the fraction it labels with probability >= 0.9, `classes_present` how many
  of the 10 digits are among those labels. The same measure on 100 real test images and on 100
  images of uniform noise is reported beside it, as the ceiling and the floor.
- classify: transformers' `ViTForImageClassification` cuts each image into 2x2 patches (16
  tokens), runs a small transformer over them and learns the label with cross-entropy;
  `test_accuracy` is on the 359 test images.

Both models are built from configs (no download). Writes the JSON report (and for generate a
PNG grid of the drawings, and with --samples the 100 drawings as a (100, 8, 8) array on the
digits' 0-16 scale).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from serving.helpers import (
    ArgumentParser,
    UsageError,
    atomic_path,
    atomic_write_json,
    cli_main,
    require_writable_file,
)
from training.stage import (
    add_settings_flags,
    device_field,
    flag_name,
    precision_field,
    settings_from,
)

PROG = "python -m training.images"
TASKS = ("generate", "classify")
N_SAMPLES = 100
CONFIDENT = 0.9  # a drawing "looks like a digit" when the classifier is this sure of one label


@dataclass
class GenerateSettings:
    """The diffusion model: diffusers' UNet2DModel on 8x8 images, DDPM noise schedule."""

    steps: int = field(default=1500, metadata={"help": "generate: training steps"})
    # more images per step beat more steps here (see BENCHMARKS.md)
    batch_size: int = field(default=256, metadata={
        "help": "images per step (default: generate 256, classify 64)"})
    lr: float = field(default=2e-3, metadata={
        "help": "peak learning rate (default: generate 2e-3, classify 1e-3)"})
    warmup: int = field(default=60, metadata={"help": "generate: warm-up steps"})
    timesteps: int = field(default=200, metadata={
        "help": "generate: diffusion steps (training and drawing)"})
    channels: list = field(default_factory=lambda: [16, 32, 32], metadata={
        "help": "generate: UNet widths, 8 -> 4 -> 2, JSON"})
    ema_decay: float = field(default=0.999, metadata={
        "help": "generate: decay of the weights' moving average"})
    seed: int = 0
    device: str = device_field()
    precision: str = precision_field()

    def check(self) -> None:
        _positive(steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                  timesteps=self.timesteps)
        if not self.channels or any(c < 8 or c % 8 for c in self.channels):
            raise UsageError(f"channels must be multiples of 8, got {self.channels}")


@dataclass
class ClassifySettings:
    """The vision transformer: transformers' ViT on 2x2 patches of the 8x8 images."""

    epochs: int = field(default=60, metadata={"help": "classify: training epochs"})
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = field(default=0.05, metadata={"help": "classify: AdamW's weight decay"})
    warmup_epochs: int = field(default=3, metadata={"help": "classify: warm-up epochs"})
    hidden_size: int = field(default=64, metadata={"help": "classify: ViT width"})
    layers: int = field(default=4, metadata={"help": "classify: ViT layers"})
    heads: int = field(default=4, metadata={"help": "classify: attention heads"})
    patch_size: int = field(default=2, metadata={"help": "classify: patch side, in pixels"})
    shift_probability: float = field(default=0.3, metadata={
        "help": "classify: a training image moves by one pixel with this probability"})
    seed: int = 0
    device: str = device_field()
    precision: str = precision_field()

    def check(self) -> None:
        _positive(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                  hidden_size=self.hidden_size, layers=self.layers, heads=self.heads,
                  patch_size=self.patch_size)
        if self.hidden_size % self.heads or 8 % self.patch_size:
            raise UsageError("hidden_size must divide by heads, and 8 by patch_size")


def _positive(**values) -> None:
    for name, value in values.items():
        if not value > 0:
            raise UsageError(f"{name} must be > 0, got {value}")


# ---------------------------------------------------------------------------- data


def digits_split(test_fraction: float = 0.2, split_seed: int = 0):
    """scikit-learn's digits as (x_train, y_train, x_test, y_test), images (N, 8, 8) on 0-16.

    The project's fixed split: per class, a fixed random 20% is held out (the same images as
    scratch/nn/data.py's load_digits, which training/ does not import)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.images.astype(np.float32)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(split_seed)
    test = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        test[members[: round(test_fraction * len(members))]] = True
    return x[~test], y[~test], x[test], y[test]


def shift_images(x: np.ndarray, probability: float, rng: np.random.Generator) -> np.ndarray:
    """Move each image (N, 8, 8) by one pixel in one of 8 directions with `probability`;
    pixels moved in from the edge are blank."""
    out = x.copy()
    moved = np.flatnonzero(rng.random(len(x)) < probability)
    directions = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    for i, d in zip(moved, rng.integers(0, len(directions), len(moved))):
        dy, dx = directions[d]
        shifted = np.zeros_like(x[i])
        shifted[max(dy, 0): 8 + min(dy, 0), max(dx, 0): 8 + min(dx, 0)] = \
            x[i][max(-dy, 0): 8 + min(-dy, 0), max(-dx, 0): 8 + min(-dx, 0)]
        out[i] = shifted
    return out


def digit_judge(x_train: np.ndarray, y_train: np.ndarray, seed: int = 0):
    """The classifier that reads the drawings: an RBF support-vector machine with libsvm's
    probabilities (Platt scaling of every one-vs-one pair on internal 5-fold cross-validation,
    combined by pairwise coupling). Unlike a network's softmax, it is not sure of anything on
    noise or on a blend of two digits (tests/training/test_images.py checks both)."""
    import warnings

    from sklearn.svm import SVC

    judge = SVC(C=10.0, gamma="scale", probability=True, random_state=seed)
    with warnings.catch_warnings():
        # scikit-learn 1.9 deprecates `probability` for CalibratedClassifierCV, whose one-vs-rest
        # calibration is confident on uniform noise (57% of it at >= 0.9), so it cannot judge
        # drawings; pyproject keeps scikit-learn below 1.11, where `probability` goes.
        warnings.simplefilter("ignore", FutureWarning)
        judge.fit(x_train.reshape(len(x_train), -1) / 16.0, y_train)
    return judge


def judged(judge, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(label, probability of that label) the judge gives each image (N, 8, 8) on 0-16."""
    probs = judge.predict_proba(images.reshape(len(images), -1) / 16.0)
    return judge.classes_[probs.argmax(axis=1)], probs.max(axis=1)


def likeness(judge, images: np.ndarray) -> dict:
    """How many images the judge labels with probability >= CONFIDENT, and which labels."""
    labels, probability = judged(judge, images)
    confident = probability >= CONFIDENT
    counts = np.bincount(labels[confident], minlength=10)
    return {"digit_likeness": float(confident.mean()),
            "classes_present": int((counts > 0).sum()),
            "class_counts": counts.tolist()}


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% (the schedule of training/trainer.py)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def step_with(optimizer, loss, parameters, scaler) -> None:
    """Backward (scaled when float16 needs it), then the trainer's clip (to 1.0) and step."""
    from training.trainer import clip_and_step

    (loss if scaler is None else scaler.scale(loss)).backward()
    clip_and_step(optimizer, list(parameters), 1.0, scaler)


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, disable=None)


# ---------------------------------------------------------------------------- generate


def build_unet(s: GenerateSettings):
    from diffusers import UNet2DModel

    n = len(s.channels)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=tuple(s.channels), down_block_types=("DownBlock2D",) * n,
                       up_block_types=("UpBlock2D",) * n, norm_num_groups=8)


def build_scheduler(s: GenerateSettings):
    from diffusers import DDPMScheduler

    # The cosine schedule reaches pure noise at t = T for any T (the linear default needs
    # T = 1000 to get there, and drawing starts from pure noise).
    return DDPMScheduler(num_train_timesteps=s.timesteps, beta_schedule="squaredcos_cap_v2")


def generate(s: GenerateSettings, n_samples: int = N_SAMPLES) -> dict:
    """Train the diffusion model on the training digits; draw n_samples; judge them."""
    started = time.perf_counter()
    import torch
    from diffusers.training_utils import EMAModel

    from serving import device

    placement = device.resolve(s.device, s.precision)
    torch.manual_seed(s.seed)
    x_train, y_train, x_test, y_test = digits_split()
    data = torch.from_numpy(x_train[:, None] / 8.0 - 1.0)  # 0-16 -> [-1, 1]
    unet, scheduler = build_unet(s).to(placement.device), build_scheduler(s)
    ema = EMAModel(unet.parameters(), decay=s.ema_decay, foreach=True)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=s.lr, weight_decay=0.0)
    scaler = placement.grad_scaler()
    rng = torch.Generator().manual_seed(s.seed)
    history = []
    with _progress(s.steps, "diffusion") as bar:
        for step in range(s.steps):
            for group in optimizer.param_groups:
                group["lr"] = s.lr * lr_factor(step, s.steps, s.warmup)
            # drawn on the CPU from one generator (the same numbers on any device), then moved
            x0 = data[torch.randint(0, len(data), (s.batch_size,), generator=rng)]
            noise = torch.randn(x0.shape, generator=rng)
            t = torch.randint(0, s.timesteps, (s.batch_size,), generator=rng)
            x0, noise, t = (v.to(placement.device) for v in (x0, noise, t))
            # the objective: from the noisy image and t, predict the noise that was added
            with placement.autocast():
                predicted = unet(scheduler.add_noise(x0, noise, t), t).sample
            loss = torch.nn.functional.mse_loss(predicted.float(), noise)
            optimizer.zero_grad(set_to_none=True)
            step_with(optimizer, loss, unet.parameters(), scaler)
            ema.step(unet.parameters())
            history.append((step, float(loss.detach())))
            bar.update()
            bar.set_postfix(loss=f"{history[-1][1]:.3f}")
    trained = time.perf_counter()

    ema.copy_to(unet.parameters())
    samples = draw(unet, scheduler, n_samples, s.seed, placement)
    drawn = time.perf_counter()

    judge = digit_judge(x_train, y_train, s.seed)
    judge_accuracy = float((judge.predict(x_test.reshape(len(x_test), -1) / 16.0) == y_test).mean())
    noise = np.random.default_rng(s.seed).uniform(0, 16, (n_samples, 8, 8))
    report = {
        **likeness(judge, samples),
        "seconds": round(time.perf_counter() - started, 1),
        "train_seconds": round(trained - started, 1),
        "draw_seconds": round(drawn - trained, 1),
        "final_loss": float(np.mean([v for _, v in history[-50:]])),
        "parameters": sum(p.numel() for p in unet.parameters()),
        "judge": "sklearn SVC(C=10, rbf, probability=True) on the training split",
        "judge_test_accuracy": judge_accuracy,
        "real_test_images": likeness(judge, x_test[:n_samples]),
        "uniform_noise": likeness(judge, noise),
        "settings": asdict(s),
        **placement.record(),
        "history": history[:: max(1, len(history) // 200)],
    }
    labels, probability = judged(judge, samples)
    return {"report": report, "samples": samples, "labels": labels, "probability": probability}


def draw(unet, scheduler, n: int, seed: int, placement=None) -> np.ndarray:
    """n images from pure noise, denoised over every diffusion step; (n, 8, 8) on 0-16, on the
    placement's device (default: the CPU in float32)."""
    import torch

    from serving.device import CPU

    placement = placement or CPU

    rng = torch.Generator().manual_seed(seed + 1)  # on the CPU: the same noise on any device
    scheduler.set_timesteps(scheduler.config.num_train_timesteps)
    x = torch.randn((n, 1, 8, 8), generator=rng).to(placement.device)
    unet.eval()
    with torch.no_grad():
        for t in scheduler.timesteps:
            with placement.autocast():
                predicted = unet(x, t).sample
            x = scheduler.step(predicted.float(), t, x, generator=rng).prev_sample
    return ((x.clamp(-1, 1) + 1) * 8).cpu().numpy().reshape(n, 8, 8).astype(np.float32)


def save_grid(samples: np.ndarray, labels: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = math.ceil(len(samples) / 10)
    fig, axes = plt.subplots(rows, 10, figsize=(10, 1.15 * rows + 0.5), dpi=80)
    for ax, image, label in zip(np.ravel(axes), samples, labels):
        ax.imshow(image, cmap="gray_r", vmin=0, vmax=16)
        ax.set_title(label, fontsize=9, pad=2)
    for ax in np.ravel(axes):
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


# ---------------------------------------------------------------------------- classify


def build_vit(s: ClassifySettings):
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=8, patch_size=s.patch_size, num_channels=1,
                       hidden_size=s.hidden_size, num_hidden_layers=s.layers,
                       num_attention_heads=s.heads, intermediate_size=2 * s.hidden_size,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                       num_labels=10)
    return ViTForImageClassification(config)


def classify(s: ClassifySettings) -> dict:
    """Train the ViT on the training digits; accuracy on the test digits."""
    started = time.perf_counter()
    import torch

    from serving import device

    placement = device.resolve(s.device, s.precision)
    torch.manual_seed(s.seed)
    x_train, y_train, x_test, y_test = digits_split()
    model = build_vit(s).to(placement.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    scaler = placement.grad_scaler()
    rng = np.random.default_rng(s.seed)
    per_epoch = math.ceil(len(x_train) / s.batch_size)
    total = s.epochs * per_epoch
    history, step = [], 0
    model.train()
    with _progress(total, "vit") as bar:
        for _ in range(s.epochs):
            images = shift_images(x_train, s.shift_probability, rng)
            order = rng.permutation(len(images))
            for i in range(0, len(order), s.batch_size):
                batch = order[i: i + s.batch_size]
                for group in optimizer.param_groups:
                    group["lr"] = s.lr * lr_factor(step, total, s.warmup_epochs * per_epoch)
                pixels = torch.from_numpy(images[batch][:, None] / 16.0).to(placement.device)
                labels = torch.from_numpy(y_train[batch]).to(placement.device)
                # the objective: the right label, by cross-entropy (the model computes it)
                with placement.autocast():
                    loss = model(pixel_values=pixels, labels=labels).loss
                optimizer.zero_grad(set_to_none=True)
                step_with(optimizer, loss, model.parameters(), scaler)
                history.append((step, float(loss.detach())))
                step += 1
                bar.update()
                bar.set_postfix(loss=f"{history[-1][1]:.3f}")
    model.eval()
    with torch.no_grad(), placement.autocast():
        pixels = torch.from_numpy(x_test[:, None] / 16.0).to(placement.device)
        logits = model(pixel_values=pixels).logits
    predicted = logits.argmax(-1).cpu().numpy()
    return {
        "test_accuracy": float((predicted == y_test).mean()),
        "test_correct": int((predicted == y_test).sum()),
        "test_images": len(y_test),
        "seconds": round(time.perf_counter() - started, 1),
        "final_loss": float(np.mean([v for _, v in history[-per_epoch:]])),
        "parameters": sum(p.numel() for p in model.parameters()),
        "settings": asdict(s),
        **placement.record(),
        "history": history[:: max(1, len(history) // 200)],
    }


# ---------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> None:
    p = parser()
    add_settings_flags(p, GenerateSettings, ClassifySettings)  # one flag per field name
    args = p.parse_args(argv)
    check_task_flags(args)
    settings = settings_from(ClassifySettings if args.task == "classify" else GenerateSettings,
                             args, None, "images")  # no recipe: the defaults, then the flags
    from serving import device

    print(f"running on {device.resolve(settings.device, settings.precision).describe()}",
          flush=True)  # before any work: an absent device is one line now
    grid = args.grid or args.json.with_suffix(".png")
    outputs = [args.json] + ([args.samples, grid] if args.task == "generate" else [])
    for out in outputs:
        if out is not None:
            require_writable_file(out)
    if args.task == "classify":
        report = classify(settings)
        print(f"ViT: test accuracy {report['test_accuracy']:.4f} "
              f"({report['test_correct']}/{report['test_images']}) in {report['seconds']} s")
    else:
        report = generate_and_save(settings, grid, args.samples)
    report["task"] = args.task
    atomic_write_json(args.json, report)
    print(f"wrote {args.json}" + (f", {grid}" if args.task == "generate" else ""))


def parser() -> ArgumentParser:
    """The flags that are not settings; main adds one flag per settings field."""
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--json", required=True, type=Path, help="write the report here")
    p.add_argument("--samples", type=Path,
                   help="generate: also save the 100 drawings here, (100, 8, 8) on 0-16 (.npy)")
    p.add_argument("--grid", type=Path,
                   help="generate: PNG of the drawings (default: the JSON's path with .png)")
    return p


def check_task_flags(args) -> None:
    """Refuse a flag of the other --task: it would be ignored without a word."""
    hint = f"run: {PROG} --task {args.task} --json {args.json}"
    if args.task == "classify":
        given = [("--samples", args.samples), ("--grid", args.grid)] + [
            (flag_name(name), getattr(args, name)) for name in only_in(GenerateSettings)]
        for flag, value in given:
            if value is not None:
                raise UsageError(f"{flag} is for --task generate; {hint}")
        return
    for name in only_in(ClassifySettings):
        if getattr(args, name) is not None:
            use = "use --steps; " if name == "epochs" else ""
            raise UsageError(f"{flag_name(name)} is for --task classify; {use}{hint}")
    if args.samples is not None and args.samples.suffix != ".npy":
        raise UsageError(f"--samples must end in .npy, got {args.samples}; {hint} "
                         f"--samples {args.samples.with_suffix('.npy')}")


def only_in(cls: type) -> list[str]:
    """The settings of one task that the other task does not have."""
    other = ClassifySettings if cls is GenerateSettings else GenerateSettings
    names = {f.name for f in fields(other)}
    return [f.name for f in fields(cls) if f.name not in names]


def generate_and_save(s: GenerateSettings, grid: Path, samples_path: Path | None) -> dict:
    """Train the diffusion model, draw, save the grid (and the samples); its report."""
    result = generate(s)
    report, samples = result["report"], result["samples"]
    labels = [f"{label} {p:.2f}" if p >= CONFIDENT else f"? {p:.2f}"
              for label, p in zip(result["labels"], result["probability"])]
    save_grid(samples, labels, grid,
              f"100 digits drawn by the diffusion model; label = the classifier's digit and "
              f"probability ('?' below {CONFIDENT}); digit_likeness "
              f"{report['digit_likeness']:.2f}, {report['classes_present']} classes")
    if samples_path is not None:
        with atomic_path(samples_path) as tmp, open(tmp, "wb") as f:
            np.save(f, samples)
    print(f"diffusion: digit_likeness {report['digit_likeness']:.2f} "
          f"({report['classes_present']} classes present; real test images "
          f"{report['real_test_images']['digit_likeness']:.2f}, noise "
          f"{report['uniform_noise']['digit_likeness']:.2f}) in {report['seconds']} s")
    return report


if __name__ == "__main__":
    cli_main(main)()
