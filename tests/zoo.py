"""The zoo: every causal LM the installed transformers maps, as a product test.

For each model type of transformers' ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`` (the installed
version's, not a hand list): the default config (``AutoConfig.for_model``) shrunk generically
(:func:`shrink`: hidden 64, 2 layers or one per distinct layer kind, vocabulary 512, 4 experts...;
two layers per kind where one does not build: :func:`tiny_model`),
a model built from it by transformers (``from_config`` under ``torch.manual_seed(0)``) and saved
with ``save_pretrained``, the project's byte-level tokenizer (refgen.tiny), a spec per dtype,
locked offline. Then ``refgen generate --specs-dir ... --keep-going`` once per dtype x load mode
(one process for all models: affordable on two cores), and one child process for every plain
``from_pretrained`` forward under the determinism profile. Each row compares tokens, top-10
indices and logits and ``last_residual_f32`` bit for bit.

``python tests/zoo.py`` (``nox -s zoo``, ``make zoo``) runs the whole mapping and prints the table
(model type x dtype x mode x exit x bit-identical x reason) and the counts; ``--types a,b``,
``--dtypes``, ``--modes`` and ``--work-dir`` narrow or keep it. tests/test_zoo.py runs
:data:`SAMPLE` on every CI run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: tests/ and the checkout importable
    sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import archzoo
from conftest import ROOT, refgen_env, run

DTYPES = ("float32", "bfloat16", "float16")
MODES = ("memory", "stream")
SEED = 0
REPO_ORG = "refgen-zoo"

# The CI sample (tests/test_zoo.py), one type per class of problem the whole mapping showed:
# qwen3: the reference architecture; gemma3: a multimodal config whose facts come from its text
# tower; mamba: attention-free (no heads, no rope); gemma3n_text: hidden states with 4 AltUp
# streams; xlnet: max_position_embeddings -1 (no limit); gpt_oss: parameters transformers keeps
# in float32 (attention sinks, router); emu3: a folder AutoModelForCausalLM cannot build (refused);
# reformer: no bfloat16 kernels on CPU (refused in bfloat16), and a never-called ParameterList
# (streamed); qwen3_moe: experts saved one tensor each, fused by transformers' checkpoint
# conversion (streamed: refgen.load.keys); gemma3 too: its keys renamed; falcon_mamba: a weight
# whose requires_grad changes torch's matmul; apertus: parameters built in config.dtype; xmod: a
# forward that refuses input_ids alone (no language set; refused); llama4_text: reads its
# embeddings' weight before calling them (streamed), and lists every layer in moe_layers.
SAMPLE = (
    "qwen3",
    "gemma3",
    "mamba",
    "gemma3n_text",
    "xlnet",
    "gpt_oss",
    "emu3",
    "reformer",
    "qwen3_moe",
    "falcon_mamba",
    "apertus",
    "xmod",
    "llama4_text",
)

# --- shrinking a config generically ---------------------------------------------------------------

_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers")
# Integer settings capped at these values wherever a config (or a sub-config) has them.
_CAPS: dict[str, int] = {
    **dict.fromkeys(("hidden_size", "n_embd", "d_model", "n_embed", "dim"), 64),
    "hidden_size_global": 64,  # a sub-model's view of another's width (blt: the global model)
    **dict.fromkeys(("intermediate_size", "ffn_dim", "n_inner", "decoder_ffn_dim", "d_ff"), 128),
    **dict.fromkeys(("encoder_ffn_dim", "ffn_hidden_size", "dim_ff"), 128),
    **dict.fromkeys(("encoder_layers",), 2),
    **dict.fromkeys(("num_attention_heads", "n_head", "num_heads", "n_heads"), 4),
    **dict.fromkeys(("decoder_attention_heads", "encoder_attention_heads"), 4),
    "num_key_value_heads": 2,
    "head_dim": 16,
    **dict.fromkeys(("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len"), 512),
    **dict.fromkeys(("num_experts", "num_local_experts", "n_routed_experts"), 4),
    "moe_num_experts": 4,
    **dict.fromkeys(("num_experts_per_tok", "moe_k", "moe_topk", "num_experts_per_token"), 2),
    **dict.fromkeys(("moe_intermediate_size", "expert_intermediate_size"), 32),
    "expert_ffn_hidden_size": 32,
    "n_shared_experts": 1,
    **dict.fromkeys(("n_group", "num_expert_group"), 1),
    "topk_group": 1,
    "zero_expert_num": 2,
    "kv_lora_rank": 16,
    "q_lora_rank": 32,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "v_head_dim": 16,
    "rotary_dim": 8,
    "num_dense_layers": 1,
    "first_k_dense_replace": 1,
    "num_kv_shared_layers": 0,
    "time_step_rank": 8,
    "n_groups": 1,
    "hidden_size_per_layer_input": 16,
}
# ... and by how a key ends (the many names of vocabularies and embedding widths).
_SUFFIX_CAPS = {
    "vocab_size": 512,
    "vocab_size_per_layer_input": 512,
    "embed_dim": 64,
    "emb_dim": 64,
    "intermediate_size": 128,
    "ffn_hidden_size": 128,
}
# Settings that may be None in a default config and need a value once the shape is small.
_FILL_NONE = (
    "head_dim",
    "num_key_value_heads",
    "num_experts_per_tok",
    "n_routed_experts",
    "n_shared_experts",
    "n_group",
    "topk_group",
)
# Keys a type's own constraints tie to others, left as they are: reformer's axial position
# embeddings must factor max_position_embeddings and sum to hidden_size (defaults 4096, 256).
_KEEP: dict[str, tuple[str, ...]] = {"reformer": ("hidden_size", "max_position_embeddings")}
VOCAB = 512


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def shrink(config: Any, per_kind: int = 1) -> dict[str, Any]:
    """Keyword arguments that make *config*'s model type tiny (recursing into sub-configs).

    Layers: *per_kind* per distinct layer kind (the tuple of every per-layer list's entry and
    the per-layer overrides at that index), at least 2, so hybrid models keep each kind; every
    per-layer list and ``per_layer_config`` follow the chosen layers.
    """
    from transformers import PretrainedConfig

    data = config.to_dict()
    model_type = data.get("model_type") or ""
    out: dict[str, Any] = {}
    layers_key = next((k for k in _LAYER_KEYS if _is_int(data.get(k))), None)
    old_layers = int(data[layers_key]) if layers_key else 0
    per_layer = data.get("per_layer_config") or {}
    chosen: list[int] = []
    if old_layers:
        # per-layer settings; a list of every layer's index (llama4's moe_layers: all of them)
        # names layers rather than telling them apart
        every = list(range(old_layers))
        lists = [
            v for v in data.values() if isinstance(v, list) and len(v) == old_layers and v != every
        ]
        kinds: dict[str, list[int]] = {}
        for i in range(old_layers):
            entry = [column[i] for column in lists] + [_layer_entry(per_layer, i)]
            kinds.setdefault(json.dumps(entry, sort_keys=True, default=str), []).append(i)
        chosen = sorted(i for layers in kinds.values() for i in layers[:per_kind])
        if len(chosen) < 2:
            chosen = list(range(min(2, old_layers)))
        out[layers_key or ""] = len(chosen)
    for key, value in data.items():
        if key.startswith("_") or key == layers_key or key in _KEEP.get(model_type, ()):
            continue
        # only a dict may be a sub-config (reading a per-layer attribute globally raises)
        sub = getattr(config, key, None) if isinstance(value, dict) else None
        if isinstance(sub, PretrainedConfig):
            out[key] = shrink(sub, per_kind)
            if sub.model_type:
                out[key]["model_type"] = sub.model_type
        elif key == "vocab_size" and _is_int(value):
            out[key] = VOCAB  # the byte-level tokenizer's ids must all be in the vocabulary
        elif key in _CAPS and _is_int(value):
            out[key] = min(value, _CAPS[key])
        elif _is_int(value) and value > 0 and key.endswith(tuple(_SUFFIX_CAPS)):
            out[key] = min(value, next(n for s, n in _SUFFIX_CAPS.items() if key.endswith(s)))
        elif key in _FILL_NONE and value is None:
            out[key] = _CAPS[key]
        elif key.endswith("token_id") and _is_int(value) and value >= VOCAB:
            out[key] = 0
        elif isinstance(value, list) and chosen and value == list(range(old_layers)):
            out[key] = list(range(len(chosen)))
        elif isinstance(value, list) and chosen and len(value) == old_layers:
            out[key] = [value[i] for i in chosen]
        elif key == "per_layer_config" and chosen and value:
            out[key] = _shrink_per_layer(per_layer, chosen, out)
    if "qk_rope_head_dim" in out and "qk_nope_head_dim" in data and "head_dim" in data:
        out["head_dim"] = out["qk_rope_head_dim"]  # multi-head latent attention: rope width
    if _is_int(data.get("expand")) and {"num_heads", "head_dim", "hidden_size"} <= out.keys():
        out["head_dim"] = out["hidden_size"] * data["expand"] // out["num_heads"]  # Mamba-2
    if _is_int(data.get("num_key_value_heads")) and data.get("num_attention_heads") == data.get(
        "num_key_value_heads"
    ):  # multi-head attention stays so (multi-head latent attention assumes it: deepseek_v32)
        out["num_key_value_heads"] = out.get("num_attention_heads", data["num_attention_heads"])
    if "is_decoder" in data and not data.get("is_encoder_decoder"):
        out["is_decoder"] = True  # the causal-LM head of an encoder architecture
    return out


def _layer_entry(per_layer: Mapping[str, Any], index: int) -> Any:
    return per_layer.get(f"{index:02d}", per_layer.get(str(index)))


def _shrink_per_layer(
    per_layer: Mapping[str, Any], chosen: Sequence[int], shrunk: Mapping[str, Any]
) -> dict[str, Any]:
    """The chosen layers' overrides, renumbered, capped, without those equal to the new global
    value (an override equal to the global one still makes the attribute per-layer)."""
    two_digits = any(len(k) == 2 for k in per_layer)
    out = {}
    for new, old in enumerate(chosen):
        entry = _layer_entry(per_layer, old) or {}
        kept = {}
        for key, value in entry.items():
            if key in _CAPS and _is_int(value):
                value = min(value, _CAPS[key] * 2)  # keep "differs from the global value"
            if shrunk.get(key) != value:
                kept[key] = value
        if kept:
            out[f"{new:02d}" if two_digits else str(new)] = kept
    return out


def tiny_config(model_type: str, per_kind: int = 1) -> Any:
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **shrink(AutoConfig.for_model(model_type), per_kind))


def tiny_model(model_type: str) -> Any:
    """The model of *model_type*'s tiny config, built by transformers under the zoo's seed: one
    layer per kind, else two (zamba ties a block shared by the layers of a kind to the first of
    them: with one layer of that kind, transformers refuses the tie)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        torch.manual_seed(SEED)
        return AutoModelForCausalLM.from_config(tiny_config(model_type))
    except Exception as first:
        try:
            torch.manual_seed(SEED)
            return AutoModelForCausalLM.from_config(tiny_config(model_type, per_kind=2))
        except Exception:
            raise first from None


def model_types() -> list[str]:
    """Every model type the installed transformers maps to a causal LM."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


# --- building (a child process with HF_HOME set) --------------------------------------------------


def spec_name(model_type: str, dtype: str) -> str:
    return f"{model_type}-{dtype}"


def _build_child(work: Path, types: Sequence[str]) -> None:
    """Build, save and lock every type not built yet; ``built.json``: type -> {repo, revision}
    or {error: why transformers could not build it}; each lock in ``locks/<type>.lock.json``."""
    from transformers.utils import logging as hf_logging

    from refgen import hub, tiny
    from refgen.spec import load_spec

    hf_logging.set_verbosity_error()
    tokenizer = archzoo.tokenizer_files(bos=False)
    built = _read_built(work)
    locks = work / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    for model_type in types:
        if model_type in built:
            continue
        try:
            model = tiny_model(model_type)
            with tempfile.TemporaryDirectory() as tmp:
                model.save_pretrained(tmp, safe_serialization=True)
                saved = {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}
            ck = tiny._write_cache(
                work / "hf-home" / "hub", f"{REPO_ORG}/{model_type}", tokenizer | saved
            )
            spec = locks / f"{model_type}.toml"
            spec.write_text(_spec_text(model_type, "float32", ck.repo, ck.revision))
            hub.lock(load_spec(spec), offline=True)
            built[model_type] = {"repo": ck.repo, "revision": ck.revision}
        except Exception as exc:  # recorded: a type transformers cannot build this way
            why = f"{type(exc).__name__}: {_first_line(exc)}"
            if not _default_builds(model_type):
                why = f"transformers' default config does not build either: {why}"
            built[model_type] = {"error": why}
        (work / "built.json").write_text(json.dumps(built, indent=1, sort_keys=True))


def _default_builds(model_type: str) -> bool:
    """Whether transformers builds *model_type*'s default config (on the meta device: no
    memory for its full size), i.e. whether the shrinking is to blame."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        with torch.device("meta"):
            AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type))
    except Exception:
        return False
    return True


def _read_built(work: Path) -> dict[str, dict[str, str]]:
    path = work / "built.json"
    data: dict[str, dict[str, str]] = json.loads(path.read_text()) if path.exists() else {}
    return data


def write_specs(work: Path, built: Mapping[str, Mapping[str, str]], dtypes: Sequence[str]) -> None:
    """``specs/<dtype>/<type>-<dtype>.toml`` and its lock, for every built type."""
    for model_type, record in built.items():
        if "error" in record:
            continue
        for dtype in dtypes:
            folder = work / "specs" / dtype
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{spec_name(model_type, dtype)}.toml"
            if not path.exists():
                path.write_text(_spec_text(model_type, dtype, record["repo"], record["revision"]))
                lock = work / "locks" / f"{model_type}.lock.json"
                shutil.copy(lock, path.with_suffix(".lock.json"))


def _spec_text(model_type: str, dtype: str, repo: str, revision: str) -> str:
    name = spec_name(model_type, dtype)
    return f"""schema = 1

[reference]
name = "{name}"
output = "{name}.json"

[model]
repo = "{repo}"
revision = "{revision}"
dtype = "{dtype}"

[run]
prompts = {json.dumps(list(archzoo.PROMPTS))}
top_k = {archzoo.TOP_K}
"""


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:240] if lines else ""


# --- the plain forwards (archzoo.run_plain: one child process, determinism profile first) --------


def plain_forwards(
    jobs: Mapping[str, tuple[Path, str]], hf_home: Path, work: Path
) -> dict[str, Any]:
    """key -> plain from_pretrained results (or {"error": ...}) for (snapshot, dtype) jobs; the
    ones already in ``plain.json`` are not recomputed."""
    target = work / "plain.json"
    done: dict[str, Any] = json.loads(target.read_text()) if target.exists() else {}
    todo = {k: job for k, job in jobs.items() if k not in done}
    if todo:
        done |= archzoo.run_plain(todo, hf_home, work / "plain-batch.json", timeout=7200)
        target.write_text(json.dumps(done, sort_keys=True))
    return {k: done[k] for k in jobs}


# --- running the CLI over a specs folder ----------------------------------------------------------

_ERROR = re.compile(r"^refgen: error: (\S+\.toml): (.*)$")
_SUMMARY = re.compile(r"^refgen: \d+ of \d+ specs failed: (.*)$")


@dataclass(frozen=True)
class Outcome:
    """One spec's run: exit code (0 when its JSON was written), and its error line."""

    exit: int
    reason: str = ""


def run_cli(work: Path, dtype: str, mode: str, resume: bool = False) -> dict[str, Outcome]:
    """``refgen generate --specs-dir specs/<dtype> --load <mode> --keep-going``: spec stem ->
    outcome, from the files written and the error lines (*resume*: those of a finished earlier
    run of this dtype and mode, when there is one)."""
    out = work / "out" / f"{dtype}-{mode}"
    log = work / f"log-{dtype}-{mode}.txt"
    done = work / f"done-{dtype}-{mode}"
    if resume and done.exists():
        return _outcomes(work, dtype, out, log.read_text(), int(done.read_text()))
    args: list[str | Path] = [
        "generate",
        "--specs-dir",
        work / "specs" / dtype,
        "--output-dir",
        out,
    ]
    args += ["--load", mode, "--force", "--keep-going"]
    env = refgen_env(work / "hf-home")
    result = run([sys.executable, "-m", "refgen", *args], env, work, check=False, timeout=7200)
    log.write_text(result.stderr)
    done.write_text(str(result.returncode))
    return _outcomes(work, dtype, out, result.stderr, result.returncode)


def _outcomes(
    work: Path, dtype: str, out: Path, stderr: str, returncode: int
) -> dict[str, Outcome]:
    reasons: dict[str, str] = {}
    codes: dict[str, int] = {}
    current = ""  # the spec whose traceback is being read
    for line in stderr.splitlines():
        if match := _ERROR.match(line):
            current = match.group(1).removesuffix(".toml")
            reasons[current] = match.group(2)
        elif line.startswith("refgen: "):
            current = ""
            if match := _SUMMARY.match(line):
                for item in match.group(1).split(", "):
                    name, _, code = item.partition(" (exit ")
                    codes[name.removesuffix(".toml")] = int(code.rstrip(")"))
        elif (
            current
            and "unexpected" in reasons[current]
            and line.strip()
            and not line.startswith((" ", "Traceback"))
        ):  # a traceback's last line: the exception and its message
            reasons[current] = f"unexpected: {line.strip()[:200]}"
    outcomes = {}
    for spec in sorted((work / "specs" / dtype).glob("*.toml")):
        if spec.stem in codes:
            outcomes[spec.stem] = Outcome(codes[spec.stem], reasons.get(spec.stem, ""))
        elif (out / f"{spec.stem}.json").is_file():
            outcomes[spec.stem] = Outcome(0)
        else:  # the whole process failed before this spec (see the log)
            outcomes[spec.stem] = Outcome(returncode, _last_line(stderr))
    return outcomes


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1][:240] if lines else ""


# --- the whole zoo --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    model_type: str
    dtype: str
    mode: str
    exit: int | None  # None: not built
    identical: bool | None  # None: not compared (no JSON, or the plain forward failed)
    reason: str = ""
    plain_error: str = ""  # the plain from_pretrained forward failed too, with this

    @property
    def outcome(self) -> str:
        """The row's class in the counts."""
        if self.exit is None:
            return "not built"
        if self.identical is not None:
            return "bit-identical" if self.identical else "differs"
        if self.exit == 2:  # plain from_pretrained runs: refgen alone refuses (e.g. streamed)
            return "refused (exit 2)" + ("" if self.plain_error else ", plain from_pretrained runs")
        if self.plain_error:
            return f"exit {self.exit}, plain from_pretrained fails too"
        return f"exit {self.exit}"


@dataclass
class Zoo:
    work: Path
    types: list[str]
    built: dict[str, dict[str, str]]  # type -> {repo, revision}, or {error}
    rows: list[Row] = field(default_factory=list)
    seconds: float = 0.0

    def row(self, model_type: str, dtype: str, mode: str) -> Row:
        for row in self.rows:
            if (row.model_type, row.dtype, row.mode) == (model_type, dtype, mode):
                return row
        raise KeyError((model_type, dtype, mode))

    def reference(self, model_type: str, dtype: str, mode: str) -> Any:
        path = self.work / "out" / f"{dtype}-{mode}" / f"{spec_name(model_type, dtype)}.json"
        return json.loads(path.read_text())

    def manifest(self, model_type: str, dtype: str, mode: str) -> Any:
        name = f"{spec_name(model_type, dtype)}.manifest.json"
        return json.loads((self.work / "out" / f"{dtype}-{mode}" / name).read_text())


def run_zoo(
    work: Path,
    types: Iterable[str],
    dtypes: Sequence[str] = DTYPES,
    modes: Sequence[str] = MODES,
    progress: bool = False,
    resume: bool = False,
) -> Zoo:
    """Build every type, run the CLI per dtype x mode, the plain forwards, and compare.

    In a *work* folder of an earlier run, what it built and the plain forwards it computed are
    reused; with *resume*, also its finished CLI runs (e.g. one dtype per invocation, then one
    invocation for the whole table)."""
    start = time.monotonic()
    types = list(types)
    work.mkdir(parents=True, exist_ok=True)
    hf_home = work / "hf-home"

    def say(text: str) -> None:
        if progress:
            print(f"zoo: {text} ({time.monotonic() - start:.0f} s)", file=sys.stderr, flush=True)

    say(f"building {len(types)} model types")
    env = refgen_env(hf_home, {"HF_HUB_OFFLINE": "1"})
    build: list[str | Path] = [sys.executable, Path(__file__).resolve(), "--build-child"]
    build += ["--work-dir", work, "--types", ",".join(types)]
    run(build, env, ROOT, timeout=7200)
    built = _read_built(work)
    write_specs(work, built, dtypes)
    zoo = Zoo(work, types, {t: built[t] for t in types})
    ok = [t for t in types if "error" not in built[t]]
    for dtype in dtypes:
        say(f"built {len(ok)}; plain forwards in {dtype}")
        jobs = {spec_name(t, dtype): (_snapshot(hf_home, t), dtype) for t in ok}
        plain = plain_forwards(jobs, hf_home, work)
        for mode in modes:
            say(f"refgen generate {dtype} {mode}")
            outcomes = run_cli(work, dtype, mode, resume)
            for t in types:
                if t not in ok:
                    why = f"not built: {built[t]['error']}"
                    zoo.rows.append(Row(t, dtype, mode, None, None, why))
                    continue
                name = spec_name(t, dtype)
                outcome, want = outcomes[name], plain[name]
                identical: bool | None = None
                if outcome.exit == 0 and "error" not in want:
                    identical = archzoo.same_as_plain(zoo.reference(t, dtype, mode), want)
                row = Row(t, dtype, mode, outcome.exit, identical, outcome.reason)
                zoo.rows.append(dataclasses.replace(row, plain_error=want.get("error", "")))
    zoo.seconds = time.monotonic() - start
    return zoo


def _snapshot(hf_home: Path, model_type: str) -> Path:
    folder = hf_home / "hub" / f"models--{REPO_ORG}--{model_type}" / "snapshots"
    (snapshot,) = folder.iterdir()
    return snapshot


# --- the table and the counts ---------------------------------------------------------------------


def table(zoo: Zoo) -> str:
    lines = [
        "| model type | dtype | mode | exit | bit-identical | reason |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in zoo.rows:
        code = "-" if row.exit is None else str(row.exit)
        same = {True: "yes", False: "NO", None: "-"}[row.identical]
        reason = row.reason.replace("|", "\\|")
        lines.append(
            f"| {row.model_type} | {row.dtype} | {row.mode} | {code} | {same} | {reason} |"
        )
    return "\n".join(lines) + "\n"


def counts(zoo: Zoo) -> str:
    """Per dtype x mode, how many rows of each outcome; then every difference, refusal, failure
    and type not built, with its reason."""
    built = sum(1 for t in zoo.types if "error" not in zoo.built[t])
    lines = [f"model types: {len(zoo.types)}; built: {built}"]
    combos = sorted({(r.dtype, r.mode) for r in zoo.rows}, key=lambda c: (DTYPES.index(c[0]), c[1]))
    for dtype, mode in combos:
        rows = [r for r in zoo.rows if (r.dtype, r.mode) == (dtype, mode) and r.exit is not None]
        tally = Counter(r.outcome for r in rows)
        listed = ", ".join(f"{n} {k}" for k, n in sorted(tally.items()))
        lines.append(f"{dtype} {mode}: {listed}")
        differs = sorted(r.model_type for r in rows if r.identical is False)
        if differs:
            lines.append(f"  differs: {', '.join(differs)}")
    refusals = sorted({(r.model_type, r.dtype, r.mode, r.reason) for r in zoo.rows if r.exit == 2})
    lines.append(f"refused (exit 2): {len(refusals)}")
    lines += [f"  {t} {d} {m}: {reason}" for t, d, m, reason in refusals]
    failures = sorted(
        {
            (r.model_type, r.dtype, r.mode, r.exit, r.reason, r.plain_error)
            for r in zoo.rows
            if r.exit not in (None, 0, 2)
        }
    )
    lines.append(f"failed (exit other than 0 and 2): {len(failures)}")
    for t, d, m, c, reason, plain in failures:
        also = f" [plain from_pretrained fails too: {plain}]" if plain else ""
        lines.append(f"  {t} {d} {m}: exit {c}: {reason}{also}")
    not_built = sorted((t, r["error"]) for t, r in zoo.built.items() if "error" in r)
    lines.append(
        f"not built (transformers cannot build the shrunk default config): {len(not_built)}"
    )
    lines += [f"  {t}: {why}" for t, why in not_built]
    lines.append(f"wall time: {zoo.seconds:.0f} s")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--types", help="comma-separated model types (default: the whole mapping)")
    parser.add_argument("--sample", action="store_true", help="the CI sample instead")
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--work-dir", type=Path, help="keep checkpoints and outputs here")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="with --work-dir: reuse the finished CLI runs of an earlier invocation there",
    )
    parser.add_argument("--build-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    dtypes = args.dtypes.split(",")
    if args.build_child:
        _build_child(args.work_dir, args.types.split(","))
        return 0
    types = list(SAMPLE) if args.sample else args.types.split(",") if args.types else model_types()
    with tempfile.TemporaryDirectory(prefix="refgen-zoo-") as tmp:
        work = args.work_dir or Path(tmp)
        zoo = run_zoo(work, types, dtypes, args.modes.split(","), True, args.resume)
        sys.stdout.write(table(zoo) + "\n" + counts(zoo))
    # a failure refgen alone has (plain transformers runs), or a difference, fails the session
    failed = any(
        (r.exit not in (None, 0, 2) and not r.plain_error) or r.identical is False for r in zoo.rows
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
