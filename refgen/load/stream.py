"""Models bigger than memory: each decoder layer's weights are resident only while it runs.

The model is built as ``from_pretrained`` builds it (same class, same construction context, same
non-persistent buffers, same weight tying) but with every parameter on the meta device. Forward
pre/post hooks on the decoder layers (found generically, from ``_no_split_modules`` or as the
largest ``ModuleList``) and on the modules outside them (embeddings, final norm, LM head) put each
module's weights in place right before it runs, read from the verified safetensors and up-cast
exactly as the in-memory load does (:func:`refgen.load.files.read_tensor`), and put the meta
tensors back after. The arithmetic of each module is unchanged, so every output byte is the
in-memory run's.

The prompts go through the model in waves (:func:`waves`: up to WAVE prompts and WAVE_TOKENS
tokens), each wave layer by layer ("layer-major"): each prompt of a wave runs its usual forward
on a thread of a fixed pool, and the hooks let one prompt at a time into a module, in prompt
order, so each layer is read and up-cast once per wave and only one forward computes at a time
(torch's two intra-op threads, as in the in-memory run). A loader thread reads the next layer
while the current one computes. No tensor is read before its file's digest matched the lock: the
config and tokenizer are hashed first, then the shards in order, so the first layers run while
the later shards are still being hashed (a single-file checkpoint waits for the whole file).

Memory: the resident modules (embeddings, norm, LM head, when the budget allows), two decoder
layers in F32, the activations and torch itself. Each layer is read into the tensors of a layer
already released, so the kernel maps and zeroes fresh pages for two layers only, not for every
weight as the in-memory load must. Time: the same forwards, the reads overlapping them and the
hashing; at the Qwen3-1.7B shape on 2 cores it ran in 0.70x to 0.98x the in-memory wall
(``python -m refgen.bench --shape 8b``, README).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refgen.errors import RefgenError, StreamingError
from refgen.load import files, keys
from refgen.load import model as model_check
from refgen.load.verify import Verifier

log = logging.getLogger("refgen")

# What a streamed run needs beyond the weights it holds: the interpreter with torch and
# transformers imported, the tokenizer, activations and hidden states of a few short prompts
# (measured: about 0.6 GB at the Qwen3-1.7B shape), with a margin.
RUNTIME_BYTES = 1_000_000_000


# Prompts in flight at once (a wave): each holds its activations, hidden states and logits until
# its wave is done, and each wave reads every streamed layer once. See Streamer. A wave also ends
# before its prompts pass WAVE_TOKENS tokens together (one prompt at least), so that long prompts
# do not hold many times one forward's memory at once (at the Qwen3-1.7B shape about 1 MB per
# token: every layer's hidden state and the logits, in float32).
WAVE = 32
WAVE_TOKENS = 2048


def waves(lengths: Sequence[int]) -> list[range]:
    """The prompts (by their token counts, in order) cut into waves: consecutive runs of at most
    WAVE prompts and, but for a single longer prompt, WAVE_TOKENS tokens."""
    cut: list[range] = []
    first, tokens = 0, 0
    for k, length in enumerate(lengths):
        if k > first and (k - first == WAVE or tokens + length > WAVE_TOKENS):
            cut.append(range(first, k))
            first, tokens = k, 0
        tokens += length
    if first < len(lengths):
        cut.append(range(first, len(lengths)))
    return cut


# --------------------------------------------------------------------------- the model


@dataclass
class _Tensor:
    owner: Any  # the module that holds the parameter (or buffer) directly
    local: str  # its name there
    key: str  # the checkpoint key it is read from (converted: CONVERTED + the model name)
    meta: Any  # the meta tensor put back on release
    conversion: keys.Conversion | None = None  # made by transformers' checkpoint conversion


@dataclass
class _Unit:
    name: str
    module: Any
    tensors: list[_Tensor]
    nbytes: int  # in the run dtype
    layer: bool
    hooked: bool = True
    resident: bool = False
    state: str = "absent"  # absent -> loading -> loaded -> released (-> loading ...)


def decoder_layers(model: Any) -> tuple[str, Any]:
    """(name, ModuleList) of the decoder layers: the list whose items are the model's
    ``_no_split_modules`` classes, else the ModuleList holding the most parameters."""
    import torch

    lists = [
        (name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and m
    ]
    if not lists:
        raise StreamingError(f"{type(model).__name__} has no ModuleList of layers to stream")
    no_split = set(getattr(model, "_no_split_modules", None) or ())
    for name, modules in lists:
        if no_split and all(type(m).__name__ in no_split for m in modules):
            return name, modules

    def size(item: tuple[str, Any]) -> int:
        return sum(p.numel() for p in item[1].parameters())

    return max(lists, key=size)


def _build_meta_model(
    folder: Path,
    dtype: str,
    attn_implementation: str | None,
    sources: Mapping[str, Any],
    verifier: Verifier,
    hint: str,
) -> tuple[Any, keys.KeyPlan]:
    """The model ``from_pretrained`` would build, parameters on meta, buffers as it sets them,
    and where each of its tensors is in the checkpoint (:func:`refgen.load.keys.plan`).

    Construction runs in ``from_pretrained``'s own init context (meta device, run dtype, no tying
    yet). Then, as ``from_pretrained`` does after loading: buffers stored in the files are read;
    the others get CPU storage and the model's ``_init_weights`` fills them (rotary ``inv_freq``
    and the like) while every parameter and read buffer is marked as loaded, so nothing else is
    initialised; then the weights are tied.
    """
    import torch
    from transformers import AutoConfig
    from transformers.utils.generic import ContextManagers

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    if attn_implementation:
        config._attn_implementation = attn_implementation
    # The run dtype on the config and its sub-configs, as from_pretrained sets it before it
    # builds the model (modeling_utils._get_dtype): some modules build their parameters in
    # config.dtype (apertus's xIELU activation), which would else be the checkpoint's dtype.
    config.dtype = getattr(torch, dtype)
    for sub_config in (getattr(config, key, None) for key in config.sub_configs):
        if sub_config is not None:
            sub_config.dtype = config.dtype
    model_class = model_check.causal_lm_class(config)
    contexts = model_class.get_init_context(getattr(torch, dtype), False, False, None)
    with ContextManagers(contexts):
        model = model_class(config)
    with contextlib.suppress(ImportError):
        from transformers.monkey_patching import patch_output_recorders

        patch_output_recorders(model)
    # The parameters from_pretrained keeps in float32 are read in float32 (refgen.load.model):
    # their meta tensors say so, and the reads follow the meta tensors' dtypes.
    planned = model_check.planned_dtypes(model, getattr(torch, dtype))
    for name, param in list(model.named_parameters()):
        if name in planned and param.dtype != planned[name]:
            owner_name, _, local = name.rpartition(".")
            kept = torch.nn.Parameter(
                param.to(planned[name]), requires_grad=param.requires_grad
            )  # meta: no data
            model.get_submodule(owner_name)._parameters[local] = kept
    keymap = keys.plan(model, {k: tuple(entry.shape) for k, (_, entry, _) in sources.items()})
    for param in model.parameters():
        param._is_hf_initialized = True
    for name, buffer in list(model.named_buffers()):
        if buffer.device.type != "meta":
            continue
        owner_name, _, local = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        if name in keymap.converted:
            raise StreamingError(f"the buffer {name} is made by a checkpoint conversion")
        if name in keymap.renamed:
            data, entry, path = sources[keymap.renamed[name]]
            verifier.verified([path.name], hint)
            value = files.read_tensor(data, entry, planned.get(name, buffer.dtype), path)
            value._is_hf_initialized = True
        else:
            value = torch.empty_like(buffer, device="cpu")
        owner._buffers[local] = value
    with torch.no_grad():
        model.initialize_weights()
    model.tie_weights()
    model.eval()
    return model, keymap


# The key of a tensor a conversion makes, by its model name (not a checkpoint key).
CONVERTED = "converted:"


def _units(model: Any, keymap: keys.KeyPlan, dtype: str) -> list[_Unit]:
    """Decoder layers, and the outermost modules outside them that own parameters, in
    registration order, each with the checkpoint key of each of its parameters (tied ones too).

    A module above the layers that owns a parameter directly (a scale, say) cannot be hooked
    without wrapping the layers: its own parameters form a resident unit without hooks.
    """
    import torch

    layers_name, layers = decoder_layers(model)
    # Every name a parameter goes by (tied parameters have several), so a tied LM head finds the
    # embedding's tensor in the files.
    aliases: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)

    def key_of(name: str, tensor: Any) -> tuple[str, keys.Conversion | None]:
        for candidate in [name, *aliases.get(id(tensor), [])]:
            if candidate in keymap.renamed:
                return keymap.renamed[candidate], None
            if candidate in keymap.converted:
                return CONVERTED + candidate, keymap.converted[candidate]
        # It would be randomly initialised: refused as the in-memory load refuses it.
        model_check.check_loading_report({"missing_keys": [name]})
        raise AssertionError("unreachable: a missing key is always refused")

    def inside(name: str, parent: str) -> bool:
        return parent == "" or name == parent or name.startswith(parent + ".")

    layer_names = [f"{layers_name}.{i}" for i in range(len(layers))]
    owners: dict[str, list[tuple[str, Any]]] = {}  # unit name -> [(module name, module)]
    containers: list[tuple[str, Any]] = []
    for module_name, module in model.named_modules():  # parents before children
        if not list(module.parameters(recurse=False)):
            continue
        # A module without a forward of its own (a ParameterList: reformer's axial position
        # embeddings) is never called, so no hook of its own would fire: its parameters are
        # put in place by the nearest ancestor that runs.
        called = module_name
        while called and type(model.get_submodule(called)).forward is torch.nn.Module.forward:
            called = called.rpartition(".")[0]
        if inside(layers_name, called):
            containers.append((module_name, module))
            continue
        unit = next((u for u in [*layer_names, *owners] if inside(called, u)), called)
        owners.setdefault(unit, []).append((module_name, module))

    def unit_of(name: str, members: list[tuple[str, Any]], layer: bool, hooked: bool) -> _Unit:
        tensors, nbytes = [], 0
        for module_name, module in members:
            for local, param in module.named_parameters(recurse=False):
                full = f"{module_name}.{local}" if module_name else local
                key, conversion = key_of(full, param)
                tensors.append(_Tensor(module, local, key, param, conversion))
                nbytes += param.numel() * param.element_size()
        module = model.get_submodule(name) if hooked else None
        return _Unit(name, module, tensors, nbytes, layer=layer, hooked=hooked)

    units = [unit_of(n, m, n in layer_names, hooked=True) for n, m in owners.items()]
    if containers:
        units.append(unit_of("(containers)", containers, layer=False, hooked=False))
    return units


class Streamer:
    """Materialises units around their forward, one prompt at a time per unit, in prompt order.

    The prompts run in waves of at most :data:`WAVE` (:func:`waves`), each layer by layer: a pool of
    forward threads (one per prompt of a wave, reused by the next wave), one loader thread per
    wave and the two reading threads, whatever the number of prompts. Within a wave, a unit is
    entered by prompt k on its v-th hooked call at global step ``v * prompts + k``; the step
    counter skips prompts whose forward has finished (or failed), so no thread waits on one that
    will never come. Each prompt waits on a condition of its own and is woken only when its turn
    comes (or a unit it waits for is read, or a forward failed), never at every step.
    """

    def __init__(
        self,
        model: Any,
        units: list[_Unit],
        sources: Mapping[str, Any],
        verifier: Verifier,
        hint: str = "",
    ):

        self.model = model
        self.units = units
        self.sources = sources  # checkpoint key -> (mapped file, TensorEntry, path)
        self.verifier = verifier
        self.hint = hint
        self.shared: dict[str, Any] = {}  # tied resident weights stay one tensor, as in memory
        # Tensors of released layers, by (shape, dtype), read into again by the next layers.
        self.free: dict[tuple[tuple[int, ...], Any], list[Any]] = {}
        self.free_lock = threading.Lock()
        # One lock; the loader and each prompt slot of a wave wait on a condition of their own.
        self.lock = threading.Lock()
        self.loader_turn = threading.Condition(self.lock)
        self.turns: list[threading.Condition] = []
        self.local = threading.local()
        self.prompts = 0
        self.step = 0
        self.finished: set[int] = set()
        self.error: BaseException | None = None
        self.bar: Any = None
        self.window = 2  # streamed units in memory at once: the one running and the next
        self.pool = ThreadPoolExecutor(files.WORKERS, thread_name_prefix="refgen-stream-read")
        self.by_module = {id(u.module): u for u in units if u.hooked}
        for unit in units:
            if unit.hooked:
                unit.module.register_forward_pre_hook(self._enter)
                unit.module.register_forward_hook(self._leave)

    # ---- loading
    def _read(self, t: _Tensor) -> Any:
        data, entry, path = self.sources[t.key]
        if tuple(entry.shape) != tuple(t.meta.shape):
            raise StreamingError(
                f"{t.key} in {path.name} has shape {list(entry.shape)}, the model "
                f"expects {list(t.meta.shape)}"
            )
        with self.free_lock:
            reused = self.free.get((tuple(t.meta.shape), t.meta.dtype))
            param = reused.pop() if reused else None
            if param is None:
                self.free.clear()  # a shape no released layer had: keep the memory bounded
        if param is not None:
            files.read_tensor(data, entry, t.meta.dtype, path, out=param.data)
            return param
        return _parameter(files.read_tensor(data, entry, t.meta.dtype, path))

    def _convert(self, todo: Sequence[_Tensor]) -> dict[str, Any]:
        """The tensors transformers' checkpoint conversions make (refgen.load.keys), each
        conversion run once, on its sources read in the dtype transformers casts them to."""

        def read(key: str, dtype: Any) -> Any:
            data, entry, path = self.sources[key]
            return files.read_tensor(data, entry, dtype, path)

        made: dict[str, Any] = {}
        for t in todo:
            if t.conversion is not None and t.key not in made:
                out = t.conversion.run(read, self.model)
                made |= {CONVERTED + name: _parameter(value) for name, value in out.items()}
        return made

    def _materialise(self, unit: _Unit, timed: bool) -> None:
        """Read a unit's tensors (on two threads, as the in-memory load does) once their files
        matched the lock, and put them in place; *timed*: the wait for the hashes holds up a
        forward."""
        names = {self.sources[k][2].name for t in unit.tensors for k in _source_keys(t)}
        self.verifier.verified(names, self.hint, timed)
        shared = self.shared if unit.resident else {}
        todo = [t for t in unit.tensors if t.key not in shared]
        read = [t for t in todo if t.conversion is None]
        values = dict(zip((t.key for t in read), self.pool.map(self._read, read), strict=True))
        values |= self._convert(todo)
        shared.update(values)
        for t in unit.tensors:
            t.owner._parameters[t.local] = shared[t.key]

    def _release(self, unit: _Unit) -> None:
        """Meta tensors back in place; the weights go to the free list for the next layers."""
        released = {}
        for t in unit.tensors:
            param = t.owner._parameters[t.local]
            if t.conversion is None:  # a conversion's output may be a view: not read into
                released[id(param)] = param  # a tensor tied within the unit is freed once
            t.owner._parameters[t.local] = t.meta
        with self.free_lock:
            for param in released.values():
                self.free.setdefault((tuple(param.shape), param.dtype), []).append(param)

    def load_unhooked(self) -> None:
        """Parameters no hook can put in place (owned by a module above the layers)."""
        for unit in self.units:
            if not unit.hooked:
                self._materialise(unit, timed=True)
                unit.state = "loaded"

    def _loader(self) -> None:
        """Reads the units ahead of the prompts, in registration order: the streamed ones within
        the window, the resident ones (read once, on first use, kept) outside it."""
        try:
            for unit in self.units:
                if unit.resident and unit.state == "loaded":
                    continue
                with self.lock:
                    while (
                        self.error is None
                        and unit.state == "absent"
                        and not unit.resident
                        and self._in_memory() >= self.window
                    ):
                        self.loader_turn.wait()
                    if self.error is not None:
                        return
                    if unit.state != "absent":  # a prompt got there first
                        continue
                    unit.state = "loading"
                self._load_now(unit, timed=False)
        except BaseException as exc:
            self._fail(exc)

    def _in_memory(self) -> int:
        return sum(1 for u in self.units if not u.resident and u.state in ("loading", "loaded"))

    def _load_now(self, unit: _Unit, timed: bool) -> None:
        try:
            self._materialise(unit, timed)
        except BaseException:
            with self.lock:
                unit.state = "absent"
                self._wake()
            raise
        with self.lock:
            unit.state = "loaded"
            self._wake()

    def _fail(self, exc: BaseException) -> None:
        with self.lock:
            if self.error is None:
                self.error = exc
            for turn in [self.loader_turn, *self.turns]:
                turn.notify_all()

    def _wake(self) -> None:
        """After a change of step or of a unit's state (the lock held): wake the prompt whose
        turn it is, the only one that can go on, and the loader, which may read further."""
        if self.turns:
            self.turns[self.step % self.prompts].notify()
        self.loader_turn.notify()

    # ---- hooks
    def _enter(self, module: Any, args: Any) -> None:
        unit = self.by_module[id(module)]
        k = self.local.prompt
        my_step = self.local.visits * self.prompts + k
        with self.lock:
            while True:
                self._check()
                if self.step == my_step:
                    if unit.state == "loaded":
                        return
                    if unit.state in ("absent", "released"):
                        # Not read yet (the loader is behind, or did not foresee this call):
                        # read it here, on this prompt's turn.
                        unit.state = "loading"
                        break
                self.turns[k].wait()
        self._load_now(unit, timed=True)

    def _leave(self, module: Any, args: Any, output: Any) -> None:
        unit = self.by_module[id(module)]
        with self.lock:
            self.local.visits += 1
            later = [
                p for p in range(self.local.prompt + 1, self.prompts) if p not in self.finished
            ]
            if not later and not unit.resident:
                self._release(unit)
                unit.state = "released"
            self._advance()
            self._wake()
        if self.bar is not None:
            self.bar.update(1)

    def _advance(self) -> None:
        self.step += 1
        for _ in range(self.prompts):
            if self.step % self.prompts in self.finished:
                self.step += 1

    def _check(self) -> None:
        if self.error is not None:
            raise RuntimeError("another prompt's forward failed") from self.error

    # ---- running
    def run(
        self, inputs: Sequence[Any], kwargs: Mapping[str, Any], progress: bool
    ) -> Iterator[Any]:
        """The forwards of *inputs*, in order, wave by wave (each wave's once it is done)."""
        import torch
        from tqdm.auto import tqdm

        threads_count = torch.get_num_threads()
        planned = waves([int(x.shape[-1]) for x in inputs])
        slots = max((len(w) for w in planned), default=1)

        def start_slot() -> None:
            # Grad mode and torch's intra-op thread count are per thread: set both as the caller
            # has them, so each op runs exactly as it would on the caller's thread.
            torch.set_num_threads(threads_count)

        total = len(self.units) * len(inputs)
        with (
            tqdm(
                total=total, desc="stream", unit="layer", disable=None if progress else True
            ) as self.bar,
            ThreadPoolExecutor(slots, "refgen-prompt", initializer=start_slot) as pool,
        ):
            try:
                for wave in planned:
                    yield from self._wave(pool, inputs[wave.start : wave.stop], kwargs)
            finally:
                with self.free_lock:
                    self.free.clear()  # kept across waves: the next wave reads into them
        self.bar = None

    def _wave(
        self, pool: ThreadPoolExecutor, inputs: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> list[Any]:
        """One wave: its prompts together, layer by layer, on the pool's threads."""
        import torch

        self.prompts = len(inputs)
        self.step = 0
        self.finished = set()
        self.error = None
        self.turns = [threading.Condition(self.lock) for _ in inputs]
        for unit in self.units:
            if not unit.resident:
                unit.state = "absent"
        results: list[Any] = [None] * len(inputs)

        def forward(k: int) -> None:
            self.local.prompt = k
            self.local.visits = 0
            try:
                with torch.inference_mode():
                    results[k] = self.model(input_ids=inputs[k], **kwargs)
            except BaseException as exc:
                self._fail(exc)
            finally:
                with self.lock:
                    self.finished.add(k)
                    if self.step % self.prompts == k:
                        self._advance()
                    self._wake()

        # The first unit (the embeddings) is in place before any forward starts: a model may
        # read its weight before calling it (llama4: input_ids.to(embed_tokens.weight.device)),
        # and would else get the meta device whenever the loader is late.
        first = next((u for u in self.units if u.hooked), None)
        if first is not None and first.state in ("absent", "released"):
            first.state = "loading"
            self._load_now(first, timed=True)
        loader = threading.Thread(target=self._loader, name="refgen-stream-load", daemon=True)
        loader.start()
        for done in [pool.submit(forward, k) for k in range(len(inputs))]:
            done.result()
        self._fail(StopIteration())  # stops the loader if it waits for a window
        loader.join()
        for unit in self.units:
            if not unit.resident and unit.state == "loaded":
                self._release(unit)
                unit.state = "released"
        self.turns = []
        error, self.error = self.error, None
        if error is not None and not isinstance(error, StopIteration):
            raise error  # the first failure, from whichever thread had it
        return results


def _parameter(tensor: Any) -> Any:
    """*tensor* as the parameter from_pretrained makes of it (``set_param_for_module``):
    requiring grad when floating. It matters even under inference mode: torch's matmul folds
    a 3-D input into one matrix product only when the weight does not require grad, and the two
    ways round differently (falcon_mamba's dt_proj and prophetnet's differed from a plain
    from_pretrained forward while their weights were streamed without it)."""
    import torch

    return torch.nn.Parameter(tensor, requires_grad=tensor.is_floating_point())


def _check_checkpoint_fits(
    model: Any, units: list[_Unit], sources: Mapping[str, Any], keymap: keys.KeyPlan
) -> None:
    """The streamed path's version of transformers' loading report (the in-memory path uses
    the report itself): every checkpoint tensor is used, with the shape the model expects."""
    used = {k for u in units for t in u.tensors for k in _source_keys(t)}
    used |= {keymap.renamed[n] for n, _ in model.named_buffers() if n in keymap.renamed}
    mismatched = []
    for t in (t for u in units for t in u.tensors):
        name = t.key.removeprefix(CONVERTED)
        shape = t.conversion.targets[name][0] if t.conversion else tuple(sources[t.key][1].shape)
        if shape != tuple(t.meta.shape):
            mismatched.append(f"{name} {shape} != {tuple(t.meta.shape)}")
    unexpected = set(keymap.unexpected) | (set(sources) - used)
    model_check.check_loading_report(
        {"unexpected_keys": sorted(unexpected), "mismatched_keys": mismatched}
    )


def _source_keys(t: _Tensor) -> list[str]:
    """The checkpoint keys *t* is read or made from."""
    return t.conversion.keys if t.conversion is not None else [t.key]


def load_streamed_model(
    folder: Path,
    verifier: Verifier,
    dtype: str = "float32",
    attn_implementation: str | None = None,
    hint: str = "",
    budget: int | None = None,
) -> tuple[Any, dict[str, dict[str, str]]]:
    """A model whose weights are read from *folder*'s verified safetensors as each module runs.

    Use :func:`forwards` to run it. No tensor is read before its file's hash matched the lock
    (the verifier is waited for file by file; the config and tokenizer before the model is
    built); the embeddings, final norm and LM head stay resident once read when they fit
    *budget* beside two decoder layers, else they are streamed like the layers. The digests
    returned are the small files'; the caller waits for :meth:`Verifier.result` before it uses
    what the forwards computed.
    """
    weights = [folder / n for n in verifier.expected if n.endswith(".safetensors")]
    try:
        headers = {path: files.read_header(path) for path in weights}
    except (RefgenError, ValueError, OSError):
        verifier.result(hint)  # a damaged file: report its hash, the real cause
        raise
    digests = verifier.verified((n for n in verifier.expected if folder / n not in headers), hint)
    import sys

    import torch

    if not sys.stderr.isatty():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    stack = contextlib.ExitStack()
    maps = {path: stack.enter_context(files.mapped(path, writable=True)) for path in weights}
    sources = {e.name: (maps[p], e, p) for p, entries in headers.items() for e in entries}
    model, keymap = _build_meta_model(folder, dtype, attn_implementation, sources, verifier, hint)
    units = _units(model, keymap, dtype)
    _check_checkpoint_fits(model, units, sources, keymap)
    layer_max = max((u.nbytes for u in units if u.layer), default=0)
    # Tied weights outside the layers (embeddings and head) are one tensor when resident.
    sizes = {t.key: t.meta.numel() for u in units if not u.layer for t in u.tensors}
    outside = sum(sizes.values()) * getattr(torch, dtype).itemsize
    keep = budget is None or outside + 2 * layer_max + RUNTIME_BYTES <= budget
    for unit in units:
        unit.resident = not unit.hooked or (keep and not unit.layer)
    streamer = Streamer(model, units, sources, verifier, hint)
    streamer.load_unhooked()
    model._refgen_streamer = streamer
    model._refgen_keys = keymap  # where each tensor came from (refgen.load.keys)
    model._refgen_files = stack  # the mappings live as long as the model
    log.info(
        "streaming %d decoder layers (%.2f GB each in %s); embeddings, norm and head %s (%.2f GB)",
        sum(u.layer for u in units),
        layer_max / 1e9,
        dtype,
        "resident" if keep else "streamed too",
        outside / 1e9,
    )
    return model, digests


def is_streamed(model: Any) -> bool:
    """Whether *model* came from :func:`load_streamed_model`."""
    return hasattr(model, "_refgen_streamer")


def forwards(
    model: Any, inputs: Sequence[Any], progress: bool = True, **kwargs: Any
) -> Iterator[Any]:
    """``model(input_ids=x, **kwargs)`` for each of *inputs*, in order, for a streamed *model*:
    all together layer by layer (each layer read once for all prompts)."""
    streamer: Streamer = model._refgen_streamer
    yield from streamer.run(inputs, kwargs, progress)
