"""One training loop for every course model, and the command line around it.

    python -m labkit.train --model gpt --preset baby            # prints one JSON line at the end
    python -m labkit.train --model lstm --preset baby --max-iters 500 --out ckpt.pt

The loop is the usual one (AdamW, linear warmup then decay, gradient clipping, periodic
evaluation), written out so a learner can read it top to bottom. Everything is seeded and
the seed is printed. Checkpoints are written atomically and loaded with `weights_only=True`.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import numbers
import os
import pickle
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from labkit import data as data_mod
from labkit.memory import peak_rss_mb
from labkit.model import MODEL_CLASSES, LanguageModel, build_model, model_config_dict


@dataclass
class TrainConfig:
    model: str = "gpt"                # "gpt", "lstm" or "conv"
    corpus: str = "shakespeare"       # "shakespeare", "synthetic", or a prepared-corpus folder
    batch_size: int = 12
    block_size: int = 64
    max_iters: int = 2000
    lr: float = 1e-3                  # peak learning rate
    min_lr: float = 0.0               # learning rate at the last iteration
    warmup_iters: int = 100
    decay: str = "linear"             # shape of the decay after warmup: "linear" (to min_lr) or "cosine"
    weight_decay: float = 0.1         # applied to matrices only (not to norms, biases, embeddings)
    beta1: float = 0.9
    beta2: float = 0.99               # 0.99 rather than 0.999: small batches give noisy gradients
    grad_clip: float = 1.0            # clip the global gradient norm; 0 = off
    eval_interval: int = 500
    eval_iters: int = 20              # batches per evaluation
    seed: int = 1337
    threads: int | None = None        # torch intra-op threads; None = torch's default
    progress: bool = True             # tqdm progress bar
    model_args: dict | None = None    # config fields of the model (n_layer, n_embd, ...)

    def __post_init__(self):
        check_train_config(self)


# The values each numeric setting allows: (int or float, test, what to tell someone who got it wrong).
# A negative max_iters or a non-finite lr used to train nothing and print NaN; a negative grad_clip
# silently reversed every gradient. Checked when a TrainConfig is made and by the command line.
SETTING_RULES: dict[str, tuple[type, object, str]] = {
    "batch_size": (int, lambda v: v >= 1, "an integer >= 1 (sequences per step)"),
    "block_size": (int, lambda v: v >= 1, "an integer >= 1 (tokens per sequence)"),
    "max_iters": (int, lambda v: v >= 1, "an integer >= 1 (training steps)"),
    "lr": (float, lambda v: 0 < v < math.inf, "a finite number > 0"),
    "min_lr": (float, lambda v: 0 <= v < math.inf, "a finite number >= 0"),
    "warmup_iters": (int, lambda v: v >= 0, "an integer >= 0"),
    "weight_decay": (float, lambda v: 0 <= v < math.inf, "a finite number >= 0"),
    "beta1": (float, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "beta2": (float, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "grad_clip": (float, lambda v: 0 <= v < math.inf, "a finite number >= 0 (0 = no clipping)"),
    "eval_interval": (int, lambda v: v >= 0, "an integer >= 0 (0 = evaluate only at the end)"),
    "eval_iters": (int, lambda v: v >= 1, "an integer >= 1 (batches per evaluation)"),
    "seed": (int, lambda v: 0 <= v < 2 ** 63, "an integer in [0, 2**63)"),
    "threads": (int, lambda v: v >= 1, "an integer >= 1 (or leave it unset for torch's default)"),
}


def check_setting(name: str, value):
    """`value` if it is allowed for training setting `name`, else ValueError saying what is allowed."""
    kind, ok, allowed = SETTING_RULES[name]
    if kind is int:
        fits = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    else:
        fits = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (fits and ok(value)):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def check_train_config(cfg: "TrainConfig") -> None:
    """Raise ValueError naming the first setting of cfg that is out of range (see SETTING_RULES)."""
    for name in SETTING_RULES:
        value = getattr(cfg, name)
        if not (name == "threads" and value is None):
            check_setting(name, value)
    if cfg.min_lr > cfg.lr:
        raise ValueError(f"min_lr={cfg.min_lr} must be <= lr={cfg.lr} (the schedule decays from lr to min_lr)")


PRESETS: dict[str, dict] = {
    # nanoGPT's "baby GPT" on a CPU: 4 layers, 4 heads, 128 dims, context 64, batch 12. Two choices
    # differ from GPT-2 (the bench's ablation measures each): an untied output head (tying saves only
    # 84·128 numbers here, and costs quality) and the ReLU² MLP activation.
    "baby": dict(batch_size=12, block_size=64, max_iters=2000, lr=1e-3, eval_iters=20,
                 model_args={"gpt": dict(n_layer=4, n_head=4, n_embd=128, dropout=0.0,
                                         tie_weights=False, activation="relu2"),
                             "lstm": dict(n_embd=128, n_hidden=256, n_layer=2, dropout=0.0),
                             "conv": dict(n_embd=128, n_layer=6, kernel_size=3, dropout=0.0)}),
    # seconds, for tests and quick looks
    "tiny": dict(batch_size=8, block_size=32, max_iters=100, lr=3e-3, warmup_iters=10, eval_interval=50,
                 eval_iters=5, model_args={"gpt": dict(n_layer=2, n_head=2, n_embd=32),
                                           "lstm": dict(n_embd=32, n_hidden=64, n_layer=1),
                                           "conv": dict(n_embd=32, n_layer=3)}),
}


def make_config(model: str = "gpt", preset: str | None = None, **overrides) -> TrainConfig:
    """A TrainConfig for `model` from a preset, with any field overridden; bad names raise ValueError."""
    if model not in MODEL_CLASSES:
        raise ValueError(f"model={model!r}; allowed: {sorted(MODEL_CLASSES)}")
    values: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"preset={preset!r} is unknown; allowed: {sorted(PRESETS)}")
        values = dict(PRESETS[preset])
        values["model_args"] = dict(values["model_args"][model])
    known = {f.name for f in fields(TrainConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"{bad} are not training settings; allowed: {sorted(known)}")
    model_args = {**(values.pop("model_args", None) or {}), **(overrides.pop("model_args", None) or {})}
    cfg = TrainConfig(model=model, **{**values, **overrides}, model_args=model_args)
    if cfg.decay not in DECAYS:
        raise ValueError(f"decay={cfg.decay!r}; allowed: {DECAYS}")
    return cfg


DECAYS = ("linear", "cosine")


def keep_freed_memory_in_process() -> bool:
    """Ask glibc's malloc to keep freed blocks for reuse instead of returning them to the OS; True if applied.

    Every step allocates the same activations and gradients (a few MB) and frees them again. By
    default glibc hands blocks this big back to the kernel (munmap) and the next step takes them
    again, paying a page fault per 4 KiB page it touches: a median of 500–1,100 faults per step for
    the baby GPT, down to a median of 0 with this call (labkit.faults measures it in fresh processes).
    Raising the mmap and trim thresholds turns malloc into a caching allocator for these sizes, which
    is what PyTorch's CUDA allocator does on a GPU (lab 08 builds one by hand). Both must be raised:
    setting only the trim threshold switches off glibc's adaptive mmap threshold, and every block of
    128 KiB or more is then mapped and unmapped each step (≈ 21,600 faults per step, measured).
    Peak memory is unchanged: the process keeps what it already needed. No-op off glibc.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL(name)
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        ok_mmap = libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)   # blocks below 1 GiB come from the heap...
        ok_trim = libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)   # ...and up to 1 GiB of free heap is kept
        return bool(ok_mmap and ok_trim)
    except (OSError, AttributeError):
        return False


def lr_at(it: int, cfg: TrainConfig) -> float:
    """Learning rate at iteration `it`: linear warmup to cfg.lr, then linear or cosine decay to cfg.min_lr."""
    if it < cfg.warmup_iters:
        return cfg.lr * (it + 1) / cfg.warmup_iters
    # 0 just after warmup, 1 at the last iteration the loop runs (max_iters - 1)
    progress = (it - cfg.warmup_iters) / max(1, cfg.max_iters - 1 - cfg.warmup_iters)
    progress = min(progress, 1.0)
    if cfg.decay == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif cfg.decay == "linear":
        shape = 1.0 - progress
    else:
        raise ValueError(f"decay={cfg.decay!r}; allowed: 'linear', 'cosine'")
    return cfg.min_lr + shape * (cfg.lr - cfg.min_lr)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices only: decaying gains, biases or embeddings only hurts."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if any(p is q for q in decay + no_decay):
                continue  # a tied weight is one parameter
            is_matrix = p.dim() >= 2 and not isinstance(module, torch.nn.Embedding)
            (decay if is_matrix else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused=True runs the whole update in one kernel per step instead of a dozen small ops per tensor
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)


@torch.no_grad()
def estimate_loss(model: LanguageModel, corpus: data_mod.Corpus, cfg: TrainConfig,
                  generator: torch.Generator | None = None, splits=("train", "val")) -> dict[str, float]:
    """Mean cross-entropy (nats/token) over cfg.eval_iters random batches of each split."""
    was_training = model.training
    model.eval()
    out = {}
    for split in splits:
        losses = [model(*data_mod.get_batch(corpus.split(split), cfg.batch_size, cfg.block_size, generator))[1].item()
                  for _ in range(cfg.eval_iters)]
        out[split] = sum(losses) / len(losses)
    model.train(was_training)
    return out


def build_for_corpus(cfg: TrainConfig, corpus: data_mod.Corpus) -> LanguageModel:
    """The model cfg describes, sized for the corpus vocabulary and cfg.block_size."""
    return build_model(cfg.model, vocab_size=corpus.vocab_size, block_size=cfg.block_size, **(cfg.model_args or {}))


def training_batches(cfg: TrainConfig, corpus: data_mod.Corpus) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The (x, y) batches train(cfg, corpus=corpus) trains on, step by step, in order.

    They come from a generator seeded with cfg.seed and used for nothing else, so they depend only on
    cfg.seed, batch_size, block_size, max_iters and corpus.train (a teacher's outputs can be cached for them).
    """
    batch_gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.max_iters):
        yield data_mod.get_batch(corpus.train, cfg.batch_size, cfg.block_size, batch_gen)


def train(cfg: TrainConfig, model: LanguageModel | None = None, corpus: data_mod.Corpus | None = None,
          log=print, desc: str | None = None,
          after_step: Callable[[LanguageModel], None] | None = None,
          loss_fn: Callable[[LanguageModel, torch.Tensor, torch.Tensor, int], torch.Tensor] | None = None,
          batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
          optimizer: torch.optim.Optimizer | None = None, first_step: int = 0,
          ) -> tuple[LanguageModel, dict]:
    """Train `model` (built from cfg if None) on the corpus; returns the model and a result dict.

    `desc` labels the progress bar (default "train <model kind>"). `after_step(model)` runs after every
    optimizer step (e.g. re-applying pruning masks, so pruned weights stay exactly zero). `loss_fn(model, x, y,
    it)` replaces the model's own cross-entropy as the training loss of step `it` (e.g. distillation from a
    teacher); evaluation still reports cross-entropy on the labels.

    `batches` replaces the default training_batches(cfg, corpus) with any iterable of (x, y) token batches (a
    stream, say): the loop stops after cfg.max_iters steps or when it runs out, and result["iters"] and
    result["tokens"] count the steps and tokens that really ran. Given `batches` and no `corpus`, nothing is
    evaluated (train_loss and val_loss are None). `optimizer` continues an earlier run's optimizer (AdamW state
    carried across phases) and `first_step` its learning-rate schedule: step `it` uses lr_at(first_step + it, cfg).
    """
    check_train_config(cfg)  # again: a config may have been edited after it was made
    if isinstance(first_step, bool) or not isinstance(first_step, numbers.Integral) or first_step < 0:
        raise ValueError(f"first_step must be an integer >= 0 (steps already trained), got {first_step!r}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer (e.g. from make_optimizer), "
                        f"got {type(optimizer).__name__}")
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    # Tiny floats (below ~1e-38, "denormals") take a slow path in x86 arithmetic; Adam's second moments
    # of small gradients drift into that range. Flushing them to zero speeds the loop up and changes
    # nothing measurable (the process-wide setting stays on; it is a no-op where unsupported).
    torch.set_flush_denormal(True)
    keep_freed_memory_in_process()
    log(f"seed {cfg.seed}")
    torch.manual_seed(cfg.seed)
    evaluate = corpus is not None or batches is None   # given batches and no corpus: nothing to evaluate on
    if corpus is None and (batches is None or model is None):
        corpus = data_mod.load_corpus(cfg.corpus)
    model = model or build_for_corpus(cfg, corpus)
    if cfg.block_size > model.block_size:
        raise ValueError(f"block_size={cfg.block_size} is larger than the model's block_size={model.block_size}")
    eval_gen = torch.Generator().manual_seed(cfg.seed + 1)     # evaluation batches, independent of training
    opt = optimizer if optimizer is not None else make_optimizer(model, cfg)
    history = []
    model.train()

    from tqdm.auto import tqdm
    bar = tqdm(range(cfg.max_iters), desc=desc or f"train {cfg.model}", disable=not cfg.progress, mininterval=1.0)
    t_start = time.perf_counter()
    train_time = 0.0
    loss = torch.tensor(float("nan"))
    batch_iter = iter(training_batches(cfg, corpus) if batches is None else batches)
    steps = tokens = 0
    for it in bar:
        t0 = time.perf_counter()
        try:
            x, y = next(batch_iter)
        except StopIteration:   # the batches ran out before cfg.max_iters steps
            break
        train_time += time.perf_counter() - t0
        if evaluate and cfg.eval_interval and it % cfg.eval_interval == 0 and it > 0:
            losses = estimate_loss(model, corpus, cfg, eval_gen)
            history.append({"iter": it, **losses})
            bar.set_postfix(val=f"{losses['val']:.3f}")
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(first_step + it, cfg)
        loss = model(x, y)[1] if loss_fn is None else loss_fn(model, x, y, it)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=True)
        opt.step()
        if after_step is not None:
            after_step(model)
        train_time += time.perf_counter() - t0
        steps += 1
        tokens += x.numel()
    bar.close()
    final = {"train": None, "val": None}
    if evaluate:
        final = estimate_loss(model, corpus, cfg, eval_gen)
        history.append({"iter": steps, **final})
    result = {
        "model": cfg.model, "params": model.num_params(), "iters": steps, "tokens": tokens, "seed": cfg.seed,
        "train_loss": None if final["train"] is None else round(final["train"], 4),
        "val_loss": None if final["val"] is None else round(final["val"], 4),
        "last_batch_loss": round(loss.item(), 4),
        "tokens_per_s": round(tokens / train_time, 1) if train_time else None,
        "ms_per_iter": round(1000 * train_time / steps, 2) if steps else None,
        "train_s": round(train_time, 3),
        "wall_s": round(time.perf_counter() - t_start, 2), "threads": torch.get_num_threads(),
        "peak_rss_mb": round(peak_rss_mb(), 1), "history": history,
    }
    return model, result


# ---------------------------------------------------------------------------------------------
# Checkpoints: {"model_config": plain dict, "state_dict": tensors, "train_config": plain dict}


def save_checkpoint(model: LanguageModel, path: Path | str, train_config: TrainConfig | None = None,
                    extra: dict | None = None) -> None:
    """Save model config + weights atomically (temp file, then rename)."""
    buf = io.BytesIO()
    torch.save({"model_config": model_config_dict(model), "state_dict": model.state_dict(),
                "train_config": asdict(train_config) if train_config else None, "extra": extra or {}}, buf)
    data_mod.atomic_write_bytes(Path(path), buf.getvalue())


RETRAIN_ADVICE = ("delete it and the zoo retrains it (if it is a labkit.zoo model), or save it again "
                  "with labkit.train.save_checkpoint")


def _unsafe_globals(path: Path) -> list[str]:
    """The Python objects (module.name) a checkpoint would make unpickling run; [] if unknown."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # an old torch, or not a zip checkpoint
        return []


def load_checkpoint(path: Path | str, model: LanguageModel | None = None) -> LanguageModel:
    """Load a checkpoint with weights_only=True; into `model` if given (its config must match), else a new one."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint={str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        config = dict(ckpt["model_config"])
        state = ckpt["state_dict"]
        kind = config.pop("kind")
    except PermissionError:
        raise  # names the file; it is not damaged, this account may not read it
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise ValueError(f"checkpoint={str(path)!r} is corrupt or not a labkit checkpoint "
                             f"({type(e).__name__}: {str(e).splitlines()[0]}): {RETRAIN_ADVICE}") from None
        # torch's message advises weights_only=False, i.e. running whatever the file holds: never do that
        found = _unsafe_globals(path)
        holds = f" ({', '.join(found)})" if found else ""
        raise ValueError(f"checkpoint={str(path)!r} is not a plain weights checkpoint: it holds Python "
                         f"objects{holds} that torch.load(weights_only=True) refuses to unpickle, because that "
                         f"could run any code: {RETRAIN_ADVICE}.") from None
    except Exception as e:  # truncated, not a torch file, or not one of ours
        first_line = (str(e).splitlines() or [""])[0]
        raise ValueError(f"checkpoint={str(path)!r} is corrupt or not a labkit checkpoint "
                         f"({type(e).__name__}: {first_line}): {RETRAIN_ADVICE}") from None
    if model is None:
        model = build_model(kind, **config)
    else:
        mine = model_config_dict(model)
        # the saved fields through the config class, so a checkpoint from before a field existed gets its default
        saved = model_config_dict(build_model(kind, **config))
        if mine != saved:
            diff = {k: (mine.get(k), v) for k, v in saved.items() if mine.get(k) != v}
            raise ValueError(f"checkpoint={str(path)!r} was saved from a different model config; "
                             f"differences (this model, checkpoint): {diff}")
    model.load_state_dict(state)
    return model


# ---------------------------------------------------------------------------------------------
# Command line


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad argument prints one line naming it and what is allowed, then exits with status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def setting_type(name: str):
    """An argparse type for training setting `name`: parses the text and applies SETTING_RULES."""
    kind, _, allowed = SETTING_RULES[name]

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
        try:
            return check_setting(name, value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None

    parse.__name__ = kind.__name__  # what argparse calls the type in its own messages
    return parse


def json_line(result: dict | list) -> str:
    """`result` as one line of strict JSON: a NaN or infinite number (a diverged run) becomes null."""
    def finite(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [finite(x) for x in v]
        return v
    return json.dumps(finite(result), allow_nan=False)


def _check_out_path(p: argparse.ArgumentParser, out: str | None) -> None:
    """Refuse an --out that could not be written before training, not after it."""
    if out is None:
        return
    path = Path(out)
    if path.is_dir():
        p.error(f"argument --out: {out!r} is a folder; give a file name, e.g. {str(path / 'model.pt')!r}")
    folder = path.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the checkpoint's missing folders are created: check the first that exists
    try:  # try it: os.access says yes to root even on a read-only file system or /proc
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".labkit-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        p.error(f"argument --out: cannot write {out!r}: {str(folder)!r} is not a folder this account can write "
                f"({e.strerror or e})")


def _check_model_args(cfg: TrainConfig) -> None:
    """Validate the --set fields against the model's config class, before any data is loaded."""
    config_cls = MODEL_CLASSES[cfg.model][1]
    model_args = dict(cfg.model_args or {})
    unknown = sorted(set(model_args) - set(config_cls.__dataclass_fields__))
    if unknown:
        raise ValueError(f"{unknown} are not fields of {config_cls.__name__}; "
                         f"allowed: {sorted(config_cls.__dataclass_fields__)}")
    config_cls(**{"block_size": cfg.block_size, **model_args})  # its __post_init__ names a bad value


def main(argv: list[str] | None = None) -> dict:
    p = OneLineErrorParser(prog="python -m labkit.train", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="gpt", choices=sorted(MODEL_CLASSES))
    p.add_argument("--preset", default="baby", choices=sorted(PRESETS))
    p.add_argument("--corpus", default="shakespeare", help="'shakespeare', 'synthetic' or a prepared-corpus folder")
    p.add_argument("--decay", default=None, choices=DECAYS)
    for name, (kind, _, allowed) in SETTING_RULES.items():
        p.add_argument("--" + name.replace("_", "-"), type=setting_type(name), default=None, metavar=kind.__name__.upper(),
                       help=f"{allowed}; default: the preset's")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="a model config field, e.g. --set n_layer=6 --set positions=sinusoidal")
    p.add_argument("--out", default=None, help="write a checkpoint here")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
                 if hasattr(args, f.name) and getattr(args, f.name) is not None and f.name not in ("model", "preset")}
    _check_out_path(p, args.out)
    if args.corpus not in data_mod.CORPORA and not (Path(args.corpus) / "meta.json").is_file():
        p.error(f"argument --corpus: {args.corpus!r} is neither one of {data_mod.CORPORA} nor a folder holding a "
                "prepared corpus (meta.json, train.bin, val.bin)")
    model_args = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set {item!r}: expected FIELD=VALUE")
        try:
            model_args[key] = json.loads(value)
        except json.JSONDecodeError:
            model_args[key] = value
    if overrides.get("threads") is None:  # the labs' thread choice (2 threads collapse on shared cores)
        from labkit.lab import choose_threads
        try:
            overrides["threads"] = choose_threads()[0]
        except ValueError as e:  # a bad LABKIT_THREADS
            p.error(str(e))
    try:  # every check that needs no data runs before the corpus is loaded
        cfg = make_config(args.model, args.preset, **overrides, model_args=model_args, progress=not args.no_progress)
    except ValueError as e:
        p.error(str(e))
    try:
        _check_model_args(cfg)
    except (ValueError, TypeError) as e:
        p.error(f"argument --set: {e}")
    try:
        model, result = train(cfg, log=lambda s: print(s, file=sys.stderr))
    except (ValueError, data_mod.CorpusUnavailable, data_mod.CacheNotAccessible) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    if args.out:
        save_checkpoint(model, args.out, cfg, extra={"val_loss": result["val_loss"]})
        result["checkpoint"] = str(args.out)
    print(json_line({k: v for k, v in result.items() if k != "history"}))
    return result


if __name__ == "__main__":
    main()
