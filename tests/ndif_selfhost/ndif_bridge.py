"""Server-side bridge for running ndif 0.1.2 with nnsight 0.8.1 (parts 1 and 2, on any host)
and on a CPU-only host (part 3).

Loaded at interpreter start in every process of the server venv (ndif CLI, gunicorn,
Ray workers, the controller, model actors, sandbox runners) by ndif_bridge.pth. It
patches lazily, only when the module concerned is imported, so plain processes pay
little. Three independent parts:

1. nnsight API bridge (needed on any host): ndif 0.1.2's controller calls
   Remotable.describe_checkpoint(key, dtype, trust_remote_code=...) and
   Remotable.max_tp_size(key, trust_remote_code=...); nnsight 0.8.1 (the latest release)
   takes no trust_remote_code there. Wrap both to accept and drop it.

2. Requests over 1 MB (needed on any host): nnsight mounts ``.save`` on every object
   when imported, and anyio checks, when it first defines a typed attribute set
   (SocketAttribute, ...: lazily, the first time starlette spools an upload over 1 MB to
   disk), that every public attribute is annotated: ``save`` is not, so the API answers
   every request over 1 MB with HTTP 400 "There was an error parsing the body". Defining
   those classes before nnsight is imported avoids it.

3. CPU shim (only when torch sees no CUDA device; NDIF_BRIDGE_CPU=0 disables it):
   ndif's model actor is written for GPUs: it loads with device=<gpu index>, calls
   torch.cuda.set_device/synchronize/empty_cache/set_per_process_memory_fraction/
   memory stats, and verify_device_placement() refuses any tensor not on CUDA. Make
   those torch.cuda calls no-ops, load on "cpu" instead of a GPU index, and accept CPU
   placement. (The Ray node is given a fake "GPU" resource via RAY_OVERRIDE_RESOURCES
   so the controller, which only manages GPU nodes, places models at all.)
"""
import importlib.abc
import importlib.machinery
import os
import sys

_PATCHERS = {}


def _on_import(name):
    def register(fn):
        _PATCHERS[name] = fn
        return fn
    return register


class _Loader(importlib.abc.Loader):
    def __init__(self, inner, fn):
        self.inner, self.fn = inner, fn

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        self.fn(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname == "nnsight":
            _define_anyio_attribute_sets()
        fn = _PATCHERS.get(fullname)
        if fn is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader, fn)
        return spec


# ---- 1. nnsight API bridge -------------------------------------------------------------


@_on_import("nnsight.modeling.mixins.remotable")
def _patch_remotable(mod):
    Remotable = mod.Remotable
    describe = Remotable.describe_checkpoint.__func__
    max_tp = Remotable.max_tp_size.__func__

    def describe_checkpoint(cls, model_key, dtype, trust_remote_code=False, **_):
        return describe(cls, model_key, dtype)

    def max_tp_size(cls, model_key, trust_remote_code=False, **_):
        return max_tp(cls, model_key)

    Remotable.describe_checkpoint = classmethod(describe_checkpoint)
    Remotable.max_tp_size = classmethod(max_tp_size)

    if _cpu_shim_wanted():
        from_key = Remotable.from_model_key.__func__

        def from_model_key(cls, model_key, **kwargs):
            # ndif's actor passes device=<gpu index>; there is no GPU here.
            if isinstance(kwargs.get("device"), int):
                kwargs["device"] = "cpu"
            return from_key(cls, model_key, **kwargs)

        Remotable.from_model_key = classmethod(from_model_key)


# ---- 2. requests over 1 MB --------------------------------------------------------------


def _define_anyio_attribute_sets():
    """Called by the finder just before nnsight itself is first imported."""
    try:
        import anyio.abc._sockets  # noqa: F401
        import anyio.streams.file  # noqa: F401
        import anyio.streams.tls  # noqa: F401
    except ImportError:  # no anyio in this process's environment: nothing to protect
        pass


# ---- 3. CPU shim ---------------------------------------------------------------------


def _cpu_shim_wanted():
    if os.environ.get("NDIF_BRIDGE_CPU", "1") == "0":
        return False
    try:
        import torch
        return not torch.cuda.is_available()
    except Exception:
        return False


@_on_import("ndif.services.ray.deployments.modeling.util")
def _patch_modeling_util(mod):
    if not _cpu_shim_wanted():
        return
    import torch

    class _Props:
        total_memory = int(os.environ.get("NDIF_BRIDGE_FAKE_GPU_BYTES", str(16 << 30)))
        name = "cpu (ndif_bridge)"

    # One function object per name: torch._dynamo keys rules by function identity and
    # refuses one object registered under two torch names.
    def _const(name, value):
        def fn(*a, **k):
            return value
        fn.__name__ = fn.__qualname__ = name
        return fn

    for name in ("synchronize", "set_device", "set_per_process_memory_fraction",
                 "empty_cache", "reset_peak_memory_stats"):
        setattr(torch.cuda, name, _const(name, None))
    for name in ("memory_allocated", "max_memory_allocated", "max_memory_reserved",
                 "memory_reserved"):
        setattr(torch.cuda, name, _const(name, 0))
    torch.cuda.get_device_properties = lambda *a, **k: _Props()

    def verify_device_placement(model, gpu_ids):
        module = getattr(model, "_module", model)
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if tensor.device.type == "meta":
                raise RuntimeError(f"'{name}' is still on the meta device (weights not dispatched)")

    mod.verify_device_placement = verify_device_placement


sys.meta_path.insert(0, _Finder())
