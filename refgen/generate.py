"""Build a reference: verify the pinned model files, run the prompts, write JSON + manifest.

The JSON holds only what the model computes (plus library versions fixed by the lock), so it is
byte-identical on any host that follows the determinism profile; everything host-specific goes
in the manifest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from refgen import (
    activations,
    determinism,
    hub,
    manifest,
    modelinfo,
    probes,
    provenance,
    weights,
)
from refgen.artifact import Artifact
from refgen.errors import CheckpointError, IntegrityError, NonFiniteError, SpecError
from refgen.hashing import sha256_bytes
from refgen.load import plan as loading
from refgen.load.model import float32_parameters
from refgen.load.stream import RUNTIME_BYTES
from refgen.load.verify import Verifier
from refgen.lock import ModelLock, read_lock
from refgen.spec import Spec
from refgen.text import shorten

log = logging.getLogger("refgen")

METHODOLOGY = (
    "transformers AutoModelForCausalLM in {dtype} on CPU, weights verified against the model "
    "lock; one forward per prompt (no padding, no batching); top_k = torch.topk of the "
    "last-position logits (descending); last_residual_f32 = hidden_states[-1] at the last "
    "position, i.e. the final-norm output that is the LM head's input."
)


@dataclass
class Timings:
    """Seconds per phase, for logs and the benchmark; never written into an artifact."""

    phases: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - start


def generate(
    spec: Spec,
    output_dir: Path | None = None,
    timings: Timings | None = None,
    load: loading.LoadOptions | None = None,
) -> Artifact:
    """Verify inputs, compute the reference and write its files atomically.

    *load* (the CLI's choice) overrides the spec's ``[run] load`` and ``memory_budget``. The
    set's inter-process lock is held from the first check to the commit (the CLI takes it
    earlier, around its up-to-date check).
    """
    outputs = destination(spec, output_dir)
    with outputs.locked():
        return _build(spec, outputs, timings or Timings(), load)


def _build(
    spec: Spec, outputs: Artifact, timings: Timings, load: loading.LoadOptions | None
) -> Artifact:
    _kept.clear()  # the previous run's model, before this one is loaded
    lock = read_lock(spec)
    folder = hub.cached_snapshot(spec, lock)
    hub.check_lock_covers(spec, lock, folder)  # the loader reads locked files only, all of them
    # Sizes first (a stat per file): a file of the wrong size is refused before any hashing,
    # and the manifest records the sizes found, not what the lock claims.
    sizes = hub.check_sizes(spec, lock, folder)
    # Only the config, tokenizer and the weights the checkpoint's index (or its single
    # model.safetensors) names are hashed and visible to the loader; pickle weights or a lock
    # without the weights are refused here, before any compute. The index is parsed only once
    # its bytes matched the lock.
    index = next((f for f in lock.files if f.path == weights.INDEX), None)
    index_bytes = hub.read_verified(folder, index) if index is not None else None
    used = set(weights.select([f.path for f in lock.files], folder, index_bytes))
    lock_used = dataclasses.replace(lock, files=tuple(f for f in lock.files if f.path in used))
    # Hashing runs on a thread from here on, beside the torch import and the load; no file's
    # content is used before it matched the lock (refgen.load).
    verifier = Verifier(folder, lock_used.files)
    capture = probes.Capture(spec) if spec.probes is not None else None
    with hub.verified_view(folder, lock_used) as view:
        files = [view / f.path for f in lock_used.files if f.path.endswith(".safetensors")]
        options = load or loading.LoadOptions(spec.load, spec.memory_budget)
        try:
            # in memory, or streamed
            load_plan = loading.choose(files, spec.dtype, options, len(spec.prompts))
            # [probes] rounding_floor: the same checkpoint again, in float64; under auto
            # streamed whatever the prompts, as the F32 model may still be in memory beside it
            floor_plan = (
                loading.choose(files, "float64", options)
                if spec.probes is not None and spec.probes.rounding_floor
                else None
            )
        except IntegrityError:
            verifier.result(integrity_hint(spec))  # a damaged file: its hash is the real cause
            raise
        reference, model_record, load_plan = compute_reference(
            spec, view, timings, verifier, capture, load_plan, lock.revision, floor_plan
        )
    # Every locked file matched before anything is written (a streamed run checks each shard
    # before it reads from it, and may finish before the last hash does).
    verifier.result(integrity_hint(spec))
    timings.phases["verify_wait"] = verifier.waited_s
    timings.phases["verify_thread"] = verifier.hashing_s
    with timings.phase("write"):
        reference_bytes = dump_reference(reference)
        # X.safetensors beside X.json: listed in the manifest (so in the statement's subjects)
        # and in X.sha256, and committed with the other files in one step.
        data = {"reference": reference_bytes}
        if capture is not None:
            data["probes"] = capture.dump()
        named = {outputs.sibling(kind).name: content for kind, content in data.items()}
        measured = ModelLock(
            lock.repo,
            lock.revision,
            tuple(dataclasses.replace(f, size=sizes[f.path]) for f in lock.files),
        )
        record = manifest.build(spec, measured, named)
        record["model"]["config"] = model_record
        # The digests this run checked each file with (refgen.lock.LockedFile.verified_with).
        record["model"]["verified_with"] = {f.path: list(f.verified_with) for f in lock_used.files}
        record["loading"] = load_plan.manifest()
        if floor_plan is not None:
            record["loading"]["rounding_floor"] = floor_plan.manifest()
        manifest_bytes = manifest.dump(record)
        # in-toto Statement / SLSA provenance v1: the manifest in the format supply-chain tools read
        statement_bytes = provenance.statement_bytes(
            record,
            manifest_name=outputs.manifest.name,
            manifest_sha256=sha256_bytes(manifest_bytes),
        )
        sums = manifest.sha256sums(
            {
                **named,
                outputs.manifest.name: manifest_bytes,
                outputs.statement.name: statement_bytes,
            }
        )
        # The sums file is what `sha256sum -c` trusts, so it is renamed into place last.
        outputs.commit(
            {
                **data,
                "manifest": manifest_bytes,
                "statement": statement_bytes,
                "sums": sums,
            }
        )
    return outputs


def destination(spec: Spec, output_dir: Path | None = None) -> Artifact:
    """Where *spec*'s set goes, checked against everything this run reads
    (:func:`refgen.hub.run_inputs`: the spec, its lock, ``requirements.lock``, the model cache,
    a local checkpoint's folder and locked files; refused: OutputError); an explicit
    ``--output-dir`` is created."""
    inputs = hub.run_inputs(spec)
    return Artifact.of(spec, output_dir).check_destination(
        inputs=inputs.files,
        protected=inputs.folders,
        key="--output-dir" if output_dir else f"'reference.output' of {spec.path.name}",
        create=output_dir is not None,
    )


def compute_reference(
    spec: Spec,
    model_dir: Path,
    timings: Timings,
    verifier: Verifier,
    capture: probes.Capture | None = None,
    load_plan: loading.LoadPlan | None = None,
    revision: str | None = None,
    floor_plan: loading.LoadPlan | None = None,
) -> tuple[dict[str, Any], dict[str, Any], loading.LoadPlan]:
    """Load in the spec's dtype and run each prompt alone, as the consumer will; ``capture``
    keeps the spec's probe tensors of each forward, and with *floor_plan* records their
    rounding floor against a float64 run of the same checkpoint (:func:`floor_run`).

    Returns the reference (the JSON), the manifest's record of the model
    (refgen.modelinfo.describe) and the load plan as carried out (``auto`` may have loaded in
    memory a checkpoint the streamed strategy cannot read as it is laid out). Everything about
    the model and the prompts is derived and checked before the first forward.
    """
    load_plan = load_plan or loading.LoadPlan("memory", "memory", 0, 0, False)
    with timings.phase("import"):
        import torch

        # The up-cast needs only torch: it runs beside the imports of transformers (0.8 s) and of
        # inductor through the deterministic mode (0.95 s), single-threaded Python (measured
        # alone, Qwen3-1.7B shape).
        reading = loading.start_reading(model_dir, verifier, load_plan, spec.dtype)
        import transformers
        from transformers import AutoTokenizer

        determinism.configure_torch()
    with timings.phase("load"):
        # config.json and the tokenizer are small and hashed first: the checkpoint is checked
        # (refgen.modelinfo.read_checkpoint) and the prompts tokenized before any weight is used.
        hint = integrity_hint(spec)
        if "config.json" not in verifier.expected:
            raise CheckpointError(
                "the model lock names no config.json, so the model cannot be built from locked "
                "files only. Re-lock the checkpoint."
            )
        verifier.verified([n for n in verifier.expected if not n.endswith(".safetensors")], hint)

        def confirm(file: Path) -> None:
            verifier.verified([file.name], hint)

        checkpoint = modelinfo.read_checkpoint(
            model_dir,
            [model_dir / n for n in verifier.expected if n.endswith(".safetensors")],
            confirm,
        )
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        except Exception as exc:  # a damaged tokenizer.json fails in many ways inside tokenizers
            raise CheckpointError(
                f"transformers cannot read the checkpoint's tokenizer ({type(exc).__name__}: "
                f"{str(exc).strip()[:200]}). Restore the tokenizer files and re-lock."
            ) from None
        # never a fallback: the tokenizer's vocabulary came from a locked file
        hub.check_tokenizer_files(spec, tokenizer, (p.name for p in model_dir.iterdir()))
        inputs = [tokenizer(prompt, return_tensors="pt")["input_ids"] for prompt in spec.prompts]
        _check_run(spec, checkpoint.facts, inputs)
        # What AutoModelForCausalLM.from_pretrained builds, from bytes hashed as they are read;
        # raises IntegrityError before any file content is used if a hash differs.
        model, _ = loading.load_model(
            model_dir,
            verifier,
            load_plan,
            spec.dtype,
            spec.attn_implementation,
            hint=hint,
            reading=reading,
        )
        load_plan = loading.as_loaded(load_plan, model)
    config = model.config
    fields = checkpoint.facts | {"use_qk_norm": modelinfo.uses_qk_norm(model)}
    # the config as transformers resolved it from the verified file, before from_pretrained's
    # run-time settings (the model's own copy carries those)
    record = modelinfo.describe(config, model, checkpoint.config_sha256) | {"dtype": spec.dtype}
    # The parameters transformers keeps in float32 whatever the run dtype (refgen.load.model).
    record["float32_parameters"] = float32_parameters(model, spec.dtype)
    if load_plan.budget > 0:  # the run's plan (a bare call plans nothing: no budget to keep)
        check_memory(spec, config, inputs, load_plan)
    log.info(
        "model: %s, attention %s, %s", record["class"], record["attn_implementation"], spec.dtype
    )
    if capture is not None:  # layers and modules checked against the model before any forward
        if "num_layers" not in fields and spec.probes and spec.probes.hidden_states is not None:
            raise SpecError(
                f"{spec.path.name}: 'probes.hidden_states' numbers hidden states by decoder layer, "
                f"but the config of {checkpoint.model_type} gives no num_hidden_layers. Remove it "
                "from [probes]."
            )
        capture.start(fields.get("num_layers", 0), probes.module_names(model))
    cases = []
    with (
        timings.phase("forward"),
        torch.inference_mode(),
        tqdm(total=len(spec.prompts), desc="forward", unit="prompt", disable=None) as bar,
        capture.recording(model, inputs) if capture is not None else contextlib.nullcontext(),
    ):
        # One forward per prompt; a streamed model runs them together, layer by layer.
        def starting(number: int) -> None:  # a 1 MB prompt is not one 1 MB log line
            log.info("forward: %s", shorten(spec.prompts[number]))

        runs = loading.forwards(
            model, inputs, starting=starting, output_hidden_states=True, use_cache=False
        )
        with _refusing_unsupported_dtype(checkpoint.model_type, spec.dtype):
            for number, (prompt, input_ids, out) in enumerate(
                zip(spec.prompts, inputs, runs, strict=True)
            ):
                check_finite_outputs(spec, number, out, model)
                if capture is not None:
                    capture.add(number, input_ids, out)
                cases.append(_case(spec, prompt, input_ids, out, fields.get("vocab_size")))
                # what last_residual_f32 took of the model's own hidden-state layout
                record["hidden_states"] = modelinfo.layout(out.hidden_states[-1])
                bar.update(1)
    if capture is not None and floor_plan is not None:
        model = None  # freed before the float64 copy is loaded
        model = floor_run(spec, model_dir, verifier, capture, floor_plan, inputs, timings)
        # what transformers kept in float32 in the float64 run too: its rounding is not in
        # the floor (as the rotary angles, computed in float32 in both runs)
        record["rounding_floor_float32_parameters"] = float32_parameters(model, "float64")
    if KEEP_LAST_MODEL:
        _kept.append(model)
    reference = {
        "model_repo": spec.repo,
        "model_revision": revision or spec.revision,
        "methodology": METHODOLOGY.format(dtype=spec.dtype),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "dtype": spec.dtype,
        **fields,
        "test_cases": cases,
    }
    return reference, record, load_plan


def floor_run(
    spec: Spec,
    model_dir: Path,
    verifier: Verifier,
    capture: probes.Capture,
    floor_plan: loading.LoadPlan,
    inputs: list[Any],
    timings: Timings,
) -> Any:
    """The rounding floor: the same checkpoint loaded in float64 (in memory or streamed, as
    *floor_plan* says), the same inputs through the same probes; *capture* records its own
    tensors' error against them (:func:`refgen.probes.rounding_floor`). No float64 tensor is
    kept. Returns the float64 model."""
    import torch

    log.info("rounding floor: the prompts again in float64 (%s)", floor_plan.mode)
    with timings.phase("rounding_floor"):
        model, _ = loading.load_model(
            model_dir,
            verifier,
            floor_plan,
            "float64",
            spec.attn_implementation,
            hint=integrity_hint(spec),
        )
        twin = probes.Capture(spec)
        twin.start(capture.num_layers, probes.module_names(model))
        with torch.inference_mode(), twin.recording(model, inputs):
            runs = loading.forwards(model, inputs, output_hidden_states=True, use_cache=False)
            for number, (input_ids, out) in enumerate(zip(inputs, runs, strict=True)):
                twin.add(number, input_ids, out)
        capture.set_floor(twin.tensors, spec.dtype)
    return model


# The last run's model, when the process will end without freeing it: ``python -m refgen``
# exits with os._exit once everything is written (refgen.__main__), and freeing 6.9 GB of weights
# tensor by tensor took 0.42 s (Qwen3-1.7B shape) while holding the GIL. At most one is kept: the
# next generate in the same process frees it first.
_kept: list[Any] = []
KEEP_LAST_MODEL = False


@contextmanager
def _refusing_unsupported_dtype(model_type: str, dtype: str) -> Iterator[None]:
    """A model whose CPU kernels do not exist in the run dtype (reformer in bfloat16: "mixed dtype
    (CPU)") is refused at its first forward, before anything is written, as plain transformers
    fails there too; so is one whose own forward code raises ValueError (it will not run on a
    prompt's input_ids alone); other errors pass unchanged."""
    try:
        yield
    except ValueError as exc:
        if not _raised_in_model_code(exc):
            raise
        # The model's own code refuses to run on input_ids alone (xmod without a language,
        # gemma4_unified_assistant without its main model's states), in plain transformers too.
        raise CheckpointError(
            f"{model_type} cannot run on a prompt's input_ids alone: its forward raised "
            f"ValueError: {(str(exc).strip().splitlines() or [''])[0][:200]} (transformers "
            f"{_transformers_version()}). refgen makes references of causal LMs that do."
        ) from None
    except (RuntimeError, NotImplementedError) as exc:
        text = str(exc)
        if not any(marker in text for marker in _UNSUPPORTED_DTYPE):
            raise
        raise CheckpointError(
            f"{model_type} cannot run in {dtype} on CPU (torch: {text.splitlines()[0][:200]}). "
            'Use a dtype the model supports, e.g. model.dtype = "float32".'
        ) from None


def _raised_in_model_code(exc: BaseException) -> bool:
    """Whether *exc* was raised by a model's code in transformers (``transformers/models/``)."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and "/transformers/models/" in frames[-1].filename.replace("\\", "/")


def _transformers_version() -> str:
    import transformers

    return str(transformers.__version__)


# torch's messages when a model cannot compute in the run dtype on CPU: a kernel missing in it
# (aten: "not implemented for 'BFloat16'"; the layer-norm kernels: "mixed dtype (CPU): expect
# parameter to have scalar type of Float"), or the model's code mixing float32 tensors of its own
# with the run dtype's (xlnet in bfloat16: "expected scalar type Float but found BFloat16";
# deepseek_v4 in float16, a float32 input to a float16 linear: "expected m1 and m2 to have the
# same dtype, but got: c10::Half != float").
_UNSUPPORTED_DTYPE = (
    "mixed dtype (CPU)",
    "not implemented for 'BFloat16'",
    "not implemented for 'Half'",
    "expected scalar type Float but found BFloat16",
    "expected scalar type Float but found Half",
    *(
        f"expected m1 and m2 to have the same dtype, but got: {a} != {b}"
        for run in ("c10::Half", "c10::BFloat16")
        for a, b in ((run, "float"), ("float", run))
    ),
)


def _check_run(spec: Spec, fields: dict[str, Any], inputs: list[Any]) -> None:
    """What the spec asks of the model fits it: refused before the model loads."""
    vocab = fields.get("vocab_size")
    if vocab is not None and spec.top_k > vocab:
        raise SpecError(
            f"{spec.path.name}: 'run.top_k' = {spec.top_k} exceeds the model's vocabulary "
            f"({vocab} tokens). Lower run.top_k."
        )
    context = fields.get("max_position_embeddings")  # absent: no limit (e.g. xlnet's -1)
    for prompt, input_ids in zip(spec.prompts, inputs, strict=True):
        length = int(input_ids.shape[-1])
        if length == 0:
            raise SpecError(f"{spec.path.name}: prompt {prompt!r} tokenizes to no tokens.")
        largest = int(input_ids.max())
        if vocab is not None and largest >= vocab:
            raise CheckpointError(
                f"the tokenizer gives prompt {shorten(prompt)} token id {largest}, outside the "
                f"model's vocabulary ({vocab} tokens): the tokenizer does not belong to the model."
            )
        if context is not None and length > context:
            raise SpecError(
                f"{spec.path.name}: prompt {prompt[:40]!r}... is {length} tokens, longer than "
                f"the model's context ({context} positions). Shorten it."
            )


def check_finite_outputs(spec: Spec, number: int, out: Any, model: Any) -> None:
    """NonFiniteError naming the first layer whose output holds NaN or an infinity (finite
    weights can still overflow, in float16 say), and the parameters of that layer that are
    not finite when they are in memory. Cheap: the hidden states are a few MB per prompt."""
    import torch

    outputs = [*enumerate(out.hidden_states), (None, out.logits)]
    for j, values in outputs:
        if bool(torch.isfinite(values).all()):
            continue
        if j is None:
            where, module = "the logits (the LM head's output)", model.get_output_embeddings()
        elif j == 0:
            where, module = "the embeddings (hidden_states[0])", model.get_input_embeddings()
        else:
            last = " and the final norm" if j == len(out.hidden_states) - 1 else ""
            where, module = f"decoder layer {j - 1}{last} (hidden_states[{j}])", None
            layers = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
            if layers and j - 1 < len(max(layers, key=len)):
                module = max(layers, key=len)[j - 1]
        culprits = [
            name
            for name, p in (module.named_parameters() if module is not None else ())
            if p.device.type != "meta" and not bool(torch.isfinite(p).all())
        ]
        named = f"; its parameters with NaN or Inf: {', '.join(culprits)}" if culprits else ""
        raise NonFiniteError(
            f"prompt {number} ({shorten(spec.prompts[number])!r}): the output of {where} holds "
            f"NaN or an infinity{named}. No reference can be made of it: check the checkpoint's "
            "weights, or run in a wider dtype (float32) if float16 overflows."
        )


def check_memory(spec: Spec, config: Any, inputs: list[Any], plan: loading.LoadPlan) -> None:
    """SpecError, with the numbers, when a prompt's forward would not fit the memory budget
    beside the weights the run holds (refgen.activations; a streamed run holds a few layers,
    counted as none): refused before the first forward, not a failed allocation in it.

    A budget the weights fill (``--load memory`` asked over it) or one below what any run
    needs (a streamed run told ``--memory-budget 1B`` to keep nothing resident) still leaves
    the forward the allowance the load plan reserves beside in-memory weights."""
    attention = str(config._attn_implementation)
    resident = plan.weights_bytes if plan.mode == "memory" else 0
    room = max(plan.budget - resident, RUNTIME_BYTES // 2)
    for number, input_ids in enumerate(inputs):
        need = activations.forward_memory(config, int(input_ids.shape[-1]), spec.dtype, attention)
        if need.total <= room:
            continue
        hint = (
            'use attn_implementation = "sdpa" in [model] (no length-squared matrix), '
            if need.attention
            else ""
        )
        weights = f" beside the weights' {resident / 1e9:.2f} GB" if resident else ""
        raise SpecError(
            f"{spec.path.name}: prompt {number} ({shorten(spec.prompts[number])!r}) is "
            f"{need.length} tokens; its forward with {attention} attention in {spec.dtype} needs "
            f"about {need.total / 1e9:.2f} GB ({need.describe()}), over the {room / 1e9:.2f} GB "
            f"the memory budget of {plan.budget / 1e9:.2f} GB leaves{weights}. Shorten the "
            f"prompt, {hint}or raise the "
            "budget (--memory-budget, [run] memory_budget) on a machine that has the memory."
        )


def _case(
    spec: Spec, prompt: str, input_ids: Any, out: Any, vocab_size: int | None
) -> dict[str, Any]:
    """One test case: tokens, top-k of the last-position logits, final hidden state.

    Floats are the exact values of the run dtype's elements (bf16/f16 widen to float32 exactly).
    ``last_residual_f32`` is ``hidden_states[-1]`` at the last position in the model's own layout
    (refgen.modelinfo.last_position): a list of ``hidden_size`` floats, or one per stream.
    """
    import torch

    logits = out.logits[0, -1]
    size = int(logits.shape[-1])
    if vocab_size is not None and size != vocab_size:
        raise CheckpointError(
            f"the model's logits have {size} entries but its config says "
            f"vocab_size {vocab_size}; the checkpoint is inconsistent."
        )
    if spec.top_k > size:
        raise SpecError(
            f"{spec.path.name}: 'run.top_k' = {spec.top_k} exceeds the model's {size} logits. "
            "Lower run.top_k."
        )
    values, indices = torch.topk(logits, spec.top_k)
    residual = modelinfo.last_position(out.hidden_states[-1]).to(torch.float32)
    return {
        "prompt": prompt,
        "tokens": [int(t) for t in input_ids[0].tolist()],
        f"top_{spec.top_k}": [
            {"index": int(i), "logit": float(v)}
            for i, v in zip(indices.tolist(), values.tolist(), strict=True)
        ],
        "last_residual_f32": residual.tolist(),
    }


def integrity_hint(spec: Spec) -> str:
    return (
        "The cached copy is corrupt or was modified. Delete it (`hf cache delete`) and "
        f"run {hub.fetch_hint(spec)}."
    )


def dump_reference(reference: dict[str, Any]) -> bytes:
    """As the published file: json.dump of float64 values (shortest repr), indent=2."""
    return (json.dumps(reference, indent=2, allow_nan=False) + "\n").encode()
