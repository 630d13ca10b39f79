"""The course's reference models: trained on first use, cached with a checksum, shared by the labs.

    model, info = zoo.load("baby-gpt")     # trains once (about a minute on 2 cores), then loads in ms

Later labs prune, quantize and distill these models, so every lab starts from the same weights.
A file lock makes parallel notebook runs wait for one training instead of each starting its own;
a checkpoint whose sha256 does not match its record is retrained, never used. A cached, valid
model is only read (no lock, no write), so a teacher can build the zoo once in a read-only folder
that a whole class shares (LABKIT_DATA_DIR).

    python -m labkit.zoo build [name ...]   # train whatever is missing (CI does this first)
"""
from __future__ import annotations

import json
from pathlib import Path

from labkit import data as data_mod
from labkit.model import LanguageModel
from labkit.train import OneLineErrorParser, load_checkpoint, make_config, save_checkpoint, train

# name -> (model kind, preset, overrides). Keep them small: each trains on first use.
ZOO: dict[str, tuple[str, str, dict]] = {
    "baby-gpt": ("gpt", "baby", {}),
}


def zoo_dir() -> Path:
    return data_mod.cache_dir() / "zoo"


def _paths(name: str) -> tuple[Path, Path]:
    return zoo_dir() / f"{name}.pt", zoo_dir() / f"{name}.json"


def _valid_record(name: str) -> dict | None:
    """The training record of `name` if it and its checkpoint are present and match, else None."""
    ckpt, record_path = _paths(name)
    try:
        record = json.loads(record_path.read_text())
        return record if data_mod.sha256_file(ckpt) == record["sha256"] else None
    except PermissionError as e:  # present but not ours to read: retraining would not help
        raise data_mod.unreadable_cache_error(e.filename or zoo_dir(), e, zoo_dir()) from None
    except (OSError, ValueError, KeyError, TypeError):  # missing, cut short, or the wrong shape
        return None


def is_built(name: str) -> bool:
    """Whether `name` is in the cache with a checkpoint that matches its record (so load() will not train)."""
    if name not in ZOO:
        raise ValueError(f"zoo model {name!r} is unknown; allowed: {sorted(ZOO)}")
    return _valid_record(name) is not None


def build(name: str, progress: bool = True) -> dict:
    """Train `name` if it is not cached (or its checksum fails); returns its record (val_loss, sha256, ...)."""
    if name not in ZOO:
        raise ValueError(f"zoo model {name!r} is unknown; allowed: {sorted(ZOO)}")
    record = _valid_record(name)
    if record:
        return record  # only read: the cache may be read-only
    with data_mod.writing_cache(f"the zoo model {name!r}", zoo_dir()):
        zoo_dir().mkdir(parents=True, exist_ok=True)
        with data_mod.cache_lock(zoo_dir() / f".{name}.lock"):
            record = _valid_record(name)  # another process may have trained it while we waited
            if record:
                return record
            kind, preset, overrides = ZOO[name]
            cfg = make_config(kind, preset, progress=progress, **overrides)
            print(f"labkit.zoo: training {name!r} once ({cfg.max_iters} iterations); later runs load it from "
                  f"{zoo_dir()}")
            model, result = train(cfg)
            ckpt, record_path = _paths(name)
            save_checkpoint(model, ckpt, cfg, extra={"val_loss": result["val_loss"]})
            record = {"name": name, "sha256": data_mod.sha256_file(ckpt),
                      **{k: v for k, v in result.items() if k != "history"}, "history": result["history"]}
            data_mod.atomic_write_bytes(record_path, json.dumps(record, indent=1).encode())
            return record


def load(name: str = "baby-gpt", progress: bool = True) -> tuple[LanguageModel, dict]:
    """The reference model `name` in eval mode (trained on first use) and its training record."""
    record = build(name, progress)
    ckpt = _paths(name)[0]
    try:
        model = load_checkpoint(ckpt)
    except PermissionError as e:
        raise data_mod.unreadable_cache_error(ckpt, e, zoo_dir()) from None
    except ValueError as e:  # its checksum matches its record, yet it is not a checkpoint labkit can load
        raise ValueError(f"zoo model {name!r}: {e}") from None
    model.eval()
    return model, record


def main(argv=None):
    p = OneLineErrorParser(prog="python -m labkit.zoo")
    p.add_argument("command", choices=["build", "list"])
    p.add_argument("names", nargs="*", default=None)
    args = p.parse_args(argv)
    names = args.names or sorted(ZOO)
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        p.error(f"argument names: {', '.join(map(repr, unknown))} not in the zoo; allowed: {sorted(ZOO)}")
    if args.command == "build":  # train with the labs' thread choice (2 threads collapse on shared cores)
        import torch

        from labkit.lab import choose_threads
        try:
            torch.set_num_threads(choose_threads()[0])
        except ValueError as e:  # a bad LABKIT_THREADS
            p.error(str(e))
    for name in names:
        if args.command == "build":
            rec = build(name)
            print(json.dumps({"name": name, "val_loss": rec["val_loss"], "params": rec["params"]}))
        else:
            rec = _valid_record(name)
            print(f"{name}: {'cached, val_loss %.4f' % rec['val_loss'] if rec else 'not built'}")


if __name__ == "__main__":
    main()
