"""The fit cache: finished fits (and the step timings and view predictions lessons add) kept under a key of their inputs.

Why: on a CPU, training is a pure function of its inputs: the starting weights and their modes, the data,
the batch order, the optimizer, the schedule, the random state, the code and the library versions. A lesson
run again with the same inputs (to read it back, or to export it) would spend minutes computing the very same
numbers. The cache hands back the weights, history and random state that `fit` left behind (`lookup`); a fit
whose inputs it cannot name completely (a callback that must see the fit run, an object a lambda captured, a
class without source, a custom sampler) always runs. Timings in the history are those measured when the entry
was trained. `computed` does the same for a forward pass over many views (TTA), and `remembered` keeps a step
timing that sizes a plan, so that a rerun is the same experiment.

It is switched on for the lessons by `config.setup` (in `<tlkit cache>/fits`) and off elsewhere.
`TLKIT_FIT_CACHE=0` switches it off, `TLKIT_FIT_CACHE=explain` says what is not cached and why, and deleting the
folder empties it.
"""
from __future__ import annotations

import datetime
import enum
import functools
import hashlib
import inspect
import json
import os
import platform
import random
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .data import loader_generators
from .errors import CheckpointError
from .storage import atomic_save, atomic_write

__all__ = ["CALLBACK_METHODS", "FOLDER", "Memo", "Uncachable", "active_folder", "computed", "describe", "limit_bytes",
           "lookup", "prune", "remembered", "use", "value_id"]

FOLDER = "fits"
FORMAT = 1
# A callback opts in with `fit_cache_id(learn)` (what it is as the fit starts; None: not cacheable),
# `fit_cache_state()` (what it holds as the fit ends: tensors, numbers, strings, lists, dicts) and
# `load_fit_cache_state(state)`. A fit read back calls no event (no before_fit, no after_fit): only the last.
CALLBACK_METHODS = ("fit_cache_id", "fit_cache_state", "load_fit_cache_state")
_TRUSTED = ("torch", "torchvision", "timm", "tlkit", "numpy", "builtins", "functools")
_NAMING: set = set()   # classes being named right now (a method may read its own class)
_state: dict[str, Any] = {"folder": None, "told": False, "told_measured": False}


class Uncachable(Exception):
    """Something a fit depends on that the key cannot name exactly; the fit runs, and is not stored."""


def use(folder: str | os.PathLike | None) -> Path | None:
    """Keep finished fits in `folder` from now on in this process (None: never); TLKIT_FIT_CACHE=0 wins."""
    off = os.environ.get("TLKIT_FIT_CACHE", "1").strip().lower() in ("0", "false", "no", "off")
    _state["folder"] = None if folder is None or off else Path(folder)
    return _state["folder"]


def active_folder() -> Path | None:
    """The folder fits are kept in, or None when the fit cache is off."""
    return _state["folder"]


# ---------------------------------------------------------------- naming what a fit depends on

def _digest(*chunks) -> str:
    """sha256 of byte strings or buffers (a numpy view is hashed in place, without a copy)."""
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()[:24]


def _tensor_digest(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    return _digest(f"{t.dtype}{tuple(t.shape)}".encode(), t.reshape(-1).view(torch.uint8).numpy())


def _tensor_digests(state: dict) -> dict[str, str]:
    return {k: _tensor_digest(v) if isinstance(v, torch.Tensor) else repr(v) for k, v in state.items()}


def _state_digest(state: dict) -> str:
    return _digest(json.dumps(_tensor_digests(state)).encode())


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    """tlkit's own source: a changed line of the package is a different fit."""
    root = Path(__file__).resolve().parent
    return _digest(*(p.relative_to(root).as_posix().encode() + p.read_bytes() for p in sorted(root.rglob("*.py"))))


def _versions() -> dict:
    import torchvision
    parts = {"torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": np.__version__}
    try:
        import timm
        parts["timm"] = timm.__version__
    except ImportError:
        pass
    return parts


def _trusted(module_name: str | None) -> bool:
    """Code from these packages is named by the package versions and tlkit's source digest in the key."""
    return (module_name or "").split(".")[0] in _TRUSTED


def _class_id(cls: type) -> str:
    """A class by name when it comes from a known package (their code is in the key), else by its source."""
    name = f"{cls.__module__}.{cls.__qualname__}"
    if _trusted(cls.__module__):
        return name
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        raise Uncachable(f"the source of class {name} is not at hand") from None
    if cls in _NAMING:                   # a method that reads its own class: named by its source above
        return f"{name}:{_digest(source.encode())}"
    _NAMING.add(cls)
    try:   # what its methods read (a global EPS) and its own bases outside the known packages count too
        methods = {k: _function_id(v, 1) for c in cls.__mro__ if not _trusted(c.__module__)
                   for k, v in vars(c).items() if inspect.isfunction(v)}
    finally:
        _NAMING.discard(cls)
    return f"{name}:{_digest(source.encode(), repr(sorted(methods.items())).encode())}"


def value_id(value, depth: int = 0) -> str:
    """A stable name for what `value` is: a plain value, tensor, enum, container, function (its code, defaults,
    captured values and the globals it reads), partial, module or object (its class and public attributes).

    Raises `Uncachable` for what it cannot name (a class without source, an object without attributes).
    """
    if depth > 8:
        raise Uncachable("nested too deeply to name")
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return repr(value)
    if isinstance(value, (np.integer, np.floating)):
        return repr(value.item())
    if isinstance(value, np.ndarray):
        return _digest(f"{value.dtype}{value.shape}".encode(), np.ascontiguousarray(value).view(np.uint8))
    if isinstance(value, torch.Tensor):
        return _tensor_digest(value)
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    if isinstance(value, torch.Generator):
        return _tensor_digest(value.get_state())
    if isinstance(value, torch.utils.data.DataLoader):
        return _loader_id(value)
    if isinstance(value, torch.utils.data.Dataset) and not isinstance(value, nn.Module):
        return _dataset_id(value)
    if isinstance(value, enum.Enum):
        return f"{_class_id(type(value))}.{value.name}"
    if isinstance(value, type):
        return _class_id(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(value_id(v, depth + 1) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{value_id(k, depth + 1)}:{value_id(v, depth + 1)}" for k, v in value.items()) + "}"
    if isinstance(value, functools.partial):
        return f"partial({value_id([value.func, value.args, value.keywords], depth + 1)})"
    if inspect.ismethod(value):
        return f"{value_id(value.__self__, depth + 1)}.{value.__func__.__name__}"
    if inspect.isfunction(value):
        return _function_id(value, depth + 1)
    if inspect.isbuiltin(value):
        owner = getattr(value, "__self__", None)
        bound = "" if owner is None or inspect.ismodule(owner) else f"@{value_id(owner, depth + 1)}"
        return f"{value.__module__}.{value.__qualname__}{bound}"
    if isinstance(value, random.Random):
        return _digest(repr(value.getstate()).encode())
    if isinstance(value, nn.Module):   # its own settings, its children, its parameters and buffers
        children = {name: value_id(child, depth + 1) for name, child in value.named_children()}
        own = {k: value_id(v, depth + 1) for k, v in _attributes(value).items()}
        devices = sorted({str(t.device) for t in (*value.parameters(), *value.buffers())})
        return f"{_class_id(type(value))}({own};{children};{_state_digest(value.state_dict())};{devices})"
    if hasattr(value, "__dict__") and not inspect.ismodule(value):
        return f"{_class_id(type(value))}({value_id(_attributes(value), depth + 1)})"
    raise Uncachable(f"{type(value).__qualname__} objects cannot be named")


_MODULE_INTERNALS = frozenset(vars(nn.Module())) | {"training"}


def _attributes(obj) -> dict:
    """An object's own attributes, private ones included (a setting kept as `_scale` is a setting too); for a
    module, those nn.Module keeps for itself (parameters, buffers, children, hooks) are named elsewhere."""
    skip = _MODULE_INTERNALS if isinstance(obj, nn.Module) else ()
    return {k: v for k, v in vars(obj).items() if k not in skip}


def _code_id(code) -> str:
    """A code object by its bytecode, names and constants (nested code included): two lambdas on one line differ."""
    consts = [_code_id(c) if inspect.iscode(c) else repr(c) for c in code.co_consts]
    return _digest(code.co_code, repr((code.co_names, code.co_varnames, code.co_freevars, consts)).encode())


def _function_id(fn, depth: int) -> str:
    """A function by its name and code, the values it captured and its defaults; from outside the known packages
    (a notebook) also the globals it reads (a `cfg` value)."""
    name = f"{fn.__module__}.{fn.__qualname__}:{_code_id(fn.__code__)}"
    read = {} if _trusted(fn.__module__) else _globals_read(fn)
    try:   # `__class__` (from super()) is the class being named
        captured = [c.cell_contents for v, c in zip(fn.__code__.co_freevars, fn.__closure__ or ()) if v != "__class__"]
    except ValueError:   # a cell not filled yet
        raise Uncachable(f"{fn.__qualname__} captures a name not yet assigned") from None
    return f"{name}({value_id([read, captured, fn.__defaults__, fn.__kwdefaults__], depth)})"


def _globals_read(fn) -> dict:
    """The module-level names a function's code (and the code nested in it) reads, with their current values."""
    names, codes = set(), [fn.__code__]
    while codes:
        code = codes.pop()
        names.update(code.co_names)
        codes.extend(c for c in code.co_consts if inspect.iscode(c))
    read = {}
    for name in sorted(names & set(fn.__globals__)):
        value = fn.__globals__[name]
        if inspect.ismodule(value):
            if not _trusted(value.__name__):
                raise Uncachable(f"{fn.__qualname__} reads module {value.__name__}")
            value = f"module {value.__name__}"
        read[name] = value
    return read


def _net_parts(net: nn.Module, tensors: dict[str, str]) -> dict:
    """The network's structure, classes, weights and buffers (`tensors`: their digests), trainable parameters and
    train/eval modes."""
    hooks = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
             "_state_dict_hooks", "_load_state_dict_pre_hooks")
    modules = list(net.named_modules())
    paths = {id(m): n for n, m in modules}
    if any(p._backward_hooks for p in net.parameters()):
        raise Uncachable("a parameter has a gradient hook")
    buffers = {n: _tensor_digest(b) for n, b in net.named_buffers() if n not in tensors}   # not in the state dict
    return {"structure": _digest(repr(net).encode()),
            "settings": _digest(repr([(n, _own_settings(m, paths)) for n, m in modules]).encode()),
            "other_buffers": buffers,
            "layout": "".join("l" if p.dim() == 4 and not p.is_contiguous() else "c" for p in net.parameters()),
            "classes": sorted({_class_id(type(m)) for _, m in modules}),
            "state": _digest(json.dumps(tensors).encode()),
            "trainable": _digest(",".join(n for n, p in net.named_parameters() if p.requires_grad).encode()),
            "training": "".join("1" if m.training else "0" for _, m in modules),
            "hooks": [f"{name}.{kind}:{value_id(h)}" for name, m in modules for kind in hooks
                      for h in getattr(m, kind, {}).values()]}


def _own_settings(module: nn.Module, paths: dict[int, str]) -> str:
    """A module's own attributes (timm's `drop_rate`, say); a module of the same network, as a layer group list
    holds, by its path (its contents are named with the network)."""
    def ref(v):
        if isinstance(v, nn.Module) and id(v) in paths:
            return f"module {paths[id(v)]}"
        if isinstance(v, (list, tuple)) and any(isinstance(x, nn.Module) for x in v):
            return [ref(x) for x in v]
        return v
    attributes = _attributes(module)
    return value_id({k: ref(v) for k, v in attributes.items()}) if attributes else ""


def _dataset_id(ds) -> str:
    from torch.utils.data import Subset, TensorDataset
    from . import data
    if isinstance(ds, data.ImageList):
        return f"images({ds.fingerprint()};{value_id(ds.transform)};{ds.decode_size};{ds.classes})"
    if isinstance(ds, TensorDataset):
        return f"{_class_id(type(ds))}({','.join(_tensor_digest(t) for t in ds.tensors)})"
    if isinstance(ds, Subset):
        return f"subset({value_id(list(ds.indices))};{_dataset_id(ds.dataset)})"
    raise Uncachable(f"a dataset of type {type(ds).__qualname__} cannot be named")


def _loader_id(loader) -> str:
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler
    if loader is None:
        return "none"
    if isinstance(loader, (list, tuple)):   # batches made once (e.g. lesson 02's validation images)
        return f"batches({value_id(loader)})"
    if not isinstance(loader, DataLoader):
        raise Uncachable(f"a loader of type {type(loader).__qualname__} cannot be named")
    sampler = loader.sampler
    if isinstance(sampler, SequentialSampler):
        order = "sequential"
    elif isinstance(sampler, RandomSampler):
        order = f"random({sampler.replacement};{sampler.num_samples})"
    else:
        raise Uncachable(f"a sampler of type {type(sampler).__qualname__} cannot be named")
    if loader.batch_sampler is not None and type(loader.batch_sampler) is not BatchSampler:
        raise Uncachable("a custom batch sampler cannot be named")
    if loader.num_workers and loader.persistent_workers:
        raise Uncachable("persistent workers carry their random state from one pass to the next")
    return (f"{_dataset_id(loader.dataset)};{order};{loader.batch_size};{loader.drop_last};{loader.num_workers};"
            f"{value_id(loader.collate_fn)};{value_id(loader.worker_init_fn)};"
            f"{[_tensor_digest(g.get_state()) for g in loader_generators(loader)]}")


def _rng_id() -> str:
    numpy = np.random.get_state()
    chunks = [_tensor_digest(torch.get_rng_state()).encode(), numpy[1].tobytes(), repr(numpy[2:]).encode(),
              repr(random.getstate()).encode()]
    if torch.cuda.is_available():
        chunks += [_tensor_digest(s).encode() for s in torch.cuda.get_rng_state_all()]
    return _digest(*chunks)


def _settings_id() -> dict:
    return {"threads": torch.get_num_threads(), "matmul": torch.get_float32_matmul_precision(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "cudnn": [torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic],
            "default_dtype": str(torch.get_default_dtype())}


def _callback_id(cb, learn) -> str:
    """A callback that says what it is (`fit_cache_id(learn)`) and can keep and restore its state."""
    ident = cb.fit_cache_id(learn) if all(hasattr(cb, m) for m in CALLBACK_METHODS) else None
    if ident is None:
        raise Uncachable(f"the callback {getattr(cb, '__qualname__', type(cb).__qualname__)} must see the fit run")
    return f"{_class_id(type(cb))}:{ident}"


def describe(learn, epochs: int, lr, schedule: Callable | None, validate, steps_per_epoch: int,
             callbacks: Sequence = (), tensors: dict[str, str] | None = None) -> dict:
    """Everything `learn.fit(epochs, lr, schedule, validate=validate)` depends on, as a JSON-able dict.

    Call it with the fit's optimizer built (`learn.opt`): its class and every group's settings are part of
    the key. `callbacks` as given to fit; `tensors`: the digests of the network's state, if already at hand.
    Raises `Uncachable` when some input cannot be named exactly.
    """
    if learn.scaler.is_enabled():
        raise Uncachable("fp16 training changes the loss scaler's state, which an entry does not keep")
    if torch.nn.modules.module._global_forward_hooks or torch.nn.modules.module._global_forward_pre_hooks \
            or torch.nn.modules.module._global_backward_hooks:
        raise Uncachable("global module hooks are set")
    names = {id(p): n for n, p in learn.net.named_parameters()}
    if any(id(p) not in names for g in learn.opt.param_groups for p in g["params"]):
        raise Uncachable("the optimizer holds parameters from outside the network")
    groups = [{**{k: value_id(v) for k, v in g.items() if k != "params"},
               "params": [names[id(p)] for p in g["params"]]} for g in learn.opt.param_groups]
    device = learn.device
    return {"format": FORMAT, "code": _code_digest(), "versions": _versions(), "settings": _settings_id(),
            "machine": _machine(), "device": str(device) + (f":{torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
            "net": _net_parts(learn.net, tensors or _tensor_digests(learn.net.state_dict())),
            "optimizer": {"class": _class_id(type(learn.opt)), "groups": groups,
                          "state": _state_digest(_flat(learn.opt.state_dict()["state"]))},
            "learner": {"precision": learn.precision, "channels_last": learn.channels_last,
                        "micro_batch": value_id(learn.micro_batch), "loss": value_id(learn.loss_fn)},
            "data": {"train": _loader_id(learn.dls.train), "val": _loader_id(getattr(learn.dls, "val", None))},
            "callbacks": [_callback_id(cb, learn) for cb in callbacks],
            "fit": {"epochs": int(epochs), "lr": value_id(lr) if not isinstance(lr, slice) else repr(lr),
                    "validate": value_id(validate), "steps_per_epoch": int(steps_per_epoch),
                    "schedule": value_id(schedule)},   # named, not called: a schedule may count its calls
            "rng": _rng_id()}


def _flat(state: dict) -> dict:
    return {f"{k}.{name}": v for k, entry in state.items() for name, v in entry.items()}


# ---------------------------------------------------------------- entries

class Memo:
    """One fit's place in the cache: replay a stored entry, or store this fit once it has finished.

    An entry holds the tensors of the network's state that the fit changed (the rest is the starting state,
    which the key names), the optimizer's last learning rates, the history, the random states and each
    module's train/eval mode. Why not the optimizer's moments: the next `fit` builds a new optimizer, and
    AdamW's moments would double the entry of every network trained whole.
    """

    def __init__(self, folder: Path, parts: dict, tensors: dict[str, str], callbacks: Sequence = ()):
        self.text = json.dumps(parts, sort_keys=True)
        self.path = folder / f"{_digest(self.text.encode())}.pt"
        self.start, self.callbacks = tensors, list(callbacks)

    def replay(self, learn) -> list[dict] | None:
        """Put the stored end of this fit into `learn` (weights, modes, learning rates, RNGs); its history rows.

        A missing, damaged or foreign entry gives None (and a damaged one is removed), so the fit runs.
        """
        from .train import load_checkpoint, set_rng_state
        try:   # on the CPU: generator states must be there, and load_state_dict copies to the net's device
            state = load_checkpoint(self.path, "cpu", "",
                                    ("key", "changed", "lrs", "history", "rng", "training", "last", "callbacks"))
            modules = [m for _, m in learn.net.named_modules()]
            if state["key"] != self.text:
                raise CheckpointError("the entry was written for other inputs")
            if len(state["training"]) != len(modules) or len(state["lrs"]) != len(learn.opt.param_groups) \
                    or not set(state["changed"]) <= set(self.start) or len(state["callbacks"]) != len(self.callbacks):
                raise CheckpointError("the entry does not fit this network")
        except FileNotFoundError:
            return None                        # not trained yet (or just pruned by another process)
        except (CheckpointError, OSError):
            self.path.unlink(missing_ok=True)
            return None
        learn.net.load_state_dict(state["changed"], strict=False)
        for cb, kept in zip(self.callbacks, state["callbacks"]):
            cb.load_fit_cache_state(kept)
        for m, flag in zip(modules, state["training"]):
            m.training = bool(flag)
        for group, lr in zip(learn.opt.param_groups, state["lrs"]):
            group["lr"] = lr
        set_rng_state(state["rng"])
        for g, s in zip(loader_generators(learn.dls.train) + loader_generators(getattr(learn.dls, "val", None)),
                        state.get("generators", [])):
            g.set_state(s)
        learn.epoch, learn.step, learn.last_loss = state["last"]
        learn.last_correct, learn.last_losses = state.get("last_correct"), state.get("last_losses")
        if not _state["told"]:
            _state["told"] = True
            print(f"tlkit: this fit ran before with exactly these inputs ({state.get('made', '?')}); its result is "
                  f"read back from the fit cache, {self.path.parent}, timings included. TLKIT_FIT_CACHE=0 trains "
                  "every fit again.")
        return list(state["history"])

    def store(self, learn, rows: list[dict]) -> None:
        """Keep the end state of a fit that ran to its end: all its epochs, or until a callback stopped it
        (`CancelFit`). A failed write only loses the shortcut."""
        from .train import rng_state
        end = learn.net.state_dict()
        changed = {k: v for k, v in end.items() if _tensor_digests({k: v})[k] != self.start.get(k)}
        state = {"key": self.text, "changed": changed, "lrs": [g["lr"] for g in learn.opt.param_groups],
                 "history": rows, "rng": rng_state(), "callbacks": [cb.fit_cache_state() for cb in self.callbacks],
                 "generators": [g.get_state() for g in
                                loader_generators(learn.dls.train) + loader_generators(getattr(learn.dls, "val", None))],
                 "training": [m.training for _, m in learn.net.named_modules()],
                 "last": [learn.epoch, learn.step, learn.last_loss],
                 "made": datetime.datetime.now().isoformat(timespec="minutes")}
        for name in ("last_correct", "last_losses"):
            if getattr(learn, name) is not None:
                state[name] = getattr(learn, name)
        _save(state, self.path)


def _machine() -> str:
    """The processor model and the cores this process may use."""
    from .env import cpu_cores
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}|{cpu_cores()} cores|{platform.machine()}"


def remembered(learn, what: str, measure: Callable[[], float]) -> float:
    """`measure()` (a timing of `learn`'s steps, e.g. seconds per image) taken once per machine and settings, then
    read back from the cache.

    Why: lesson 08 sizes its work from such timings; measured again on a rerun, they would move by a few percent and
    buy other image counts, so the rerun would be another experiment (and none of its fits could be read back).
    The key covers the machine, the network's structure and trainable parameters, the data and its transform,
    the batch and the learner's settings, not the weights' values, which do not change the time.
    """
    folder = active_folder()
    if folder is None:
        return measure()
    try:
        loader = learn.dls.train
        parts = {"what": what, "format": FORMAT, "code": _code_digest(), "versions": _versions(),
                 "settings": _settings_id(), "machine": _machine(), "device": str(learn.device),
                 "structure": _digest(repr(learn.net).encode()),
                 "trainable": _digest(",".join(n for n, p in learn.net.named_parameters() if p.requires_grad).encode()),
                 "training": "".join("1" if m.training else "0" for m in learn.net.modules()),
                 "data": [_dataset_id(loader.dataset), loader.batch_size, loader.num_workers],
                 "learner": [learn.precision, learn.channels_last, learn.micro_batch]}
    except Uncachable:
        return measure()
    text = json.dumps(parts, sort_keys=True)
    path = folder / "measured" / f"{_digest(text.encode())}.json"
    try:
        kept = json.loads(path.read_text())
        if kept["key"] == text and isinstance(kept["value"], float) and kept["value"] > 0:
            if not _state["told_measured"]:
                _state["told_measured"] = True
                print(f"tlkit: step timings measured on this machine before ({kept['made']}) are read back, so the "
                      "budget buys the same work as then. TLKIT_FIT_CACHE=0 measures again.")
            return kept["value"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    value = float(measure())
    made = datetime.datetime.now().isoformat(timespec="minutes")
    try:
        atomic_write(path, lambda f: f.write(json.dumps({"key": text, "value": value, "made": made}).encode()))
    except OSError:
        pass
    return value


def computed(what: str, inputs: dict, compute: Callable[[], Any]) -> Any:
    """`compute()` (tensors, or tuples, lists and dicts of them), read back when it ran before on exactly `inputs`
    (each named by `value_id`) and the same random state, which is then restored as `compute` left it.

    Why: a forward pass of many views of every image (lesson 06's TTA) is most of what a rerun would repeat once
    its fits are read back.
    """
    from .train import load_checkpoint, rng_state, set_rng_state
    folder = active_folder()
    if folder is None:
        return compute()
    try:
        text = json.dumps({"what": what, "format": FORMAT, "code": _code_digest(), "versions": _versions(),
                           "settings": _settings_id(), "machine": _machine(), "inputs": value_id(inputs),
                           "rng": _rng_id()}, sort_keys=True)
    except (Uncachable, TypeError, ValueError, RuntimeError) as exc:
        _explain(exc)
        return compute()
    path = folder / "computed" / f"{_digest(text.encode())}.pt"
    try:
        state = load_checkpoint(path, "cpu", "", ("key", "value", "rng"))
        if state["key"] != text:
            raise CheckpointError("the entry was written for other inputs")
        set_rng_state(state["rng"])
        return state["value"]
    except FileNotFoundError:
        pass                                   # not computed yet (or just pruned by another process)
    except (CheckpointError, OSError):
        path.unlink(missing_ok=True)
    value = compute()
    _save({"key": text, "value": value, "rng": rng_state()}, path)
    return value


def _save(state: dict, path: Path) -> None:
    """Write an entry (only tensors, numbers, strings, lists and dicts, which load without running code); a failed
    write only loses the shortcut."""
    from .train import _is_plain, _plain
    state = _plain(state)
    if not _is_plain(state):
        return
    try:
        atomic_save(state, path)
    except Exception:   # a full disk surfaces as OSError or RuntimeError
        return
    prune(path.parent if path.parent.name == FOLDER else path.parent.parent)


def limit_bytes() -> int:
    """How much disk the fit cache may hold: `TLKIT_FIT_CACHE_GB` (default 2; the quick course fills about 0.9)."""
    try:
        gb = float(os.environ.get("TLKIT_FIT_CACHE_GB", "2"))
    except ValueError:
        gb = 2.0
    return int(max(gb, 0.0) * 1024 ** 3)


def prune(folder: Path, limit: int | None = None) -> list[Path]:
    """Delete the oldest entries (by when they were written) until the folder holds at most `limit` bytes."""
    limit = limit_bytes() if limit is None else limit
    entries = []
    for path in Path(folder).rglob("*.pt"):
        try:
            st = path.stat()
        except OSError:
            continue   # removed by another process meanwhile
        entries.append((st.st_mtime_ns, st.st_size, path))
    total, removed = sum(size for _, size, _ in entries), []
    for _, size, path in sorted(entries):
        if total <= limit:
            break
        path.unlink(missing_ok=True)
        total -= size
        removed.append(path)
    return removed


def _explain(exc: Exception) -> None:
    if os.environ.get("TLKIT_FIT_CACHE") == "explain":
        print(f"tlkit: not cached: {exc}")


def lookup(learn, epochs: int, lr, schedule, validate, steps_per_epoch: int, callbacks: Sequence = ()) -> Memo | None:
    """The fit's cache entry, or None when the cache is off or the fit's inputs cannot all be named."""
    folder = active_folder()
    if folder is None:
        return None
    try:
        tensors = _tensor_digests(learn.net.state_dict())
        parts = describe(learn, epochs, lr, schedule, validate, steps_per_epoch, callbacks, tensors)
        return Memo(folder, parts, tensors, callbacks)
    except (Uncachable, TypeError, ValueError, RuntimeError) as exc:   # e.g. a lazy parameter not made yet
        _explain(exc)
        return None
