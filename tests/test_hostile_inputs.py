"""Hostile input, second round (issue 19), the input side: a local checkpoint is an input, the
lock covers everything the loader reads, only regular files are read (bounded, never blocking),
hashes before any parse, non-finite values and a prompt too large for memory refused before
anything is written.

The CLI cases run as tests/test_hostile.py's do (a private copy of the tiny setup, the whole
tree compared before and after, ``refgen: error:`` with the documented exit code, no traceback),
each under a timeout: a FIFO must never hang a run.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import json
import math
import os
import shutil
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MINIMAL_SPEC, TinySetup, run_refgen, write_spec_text
from hypothesis import given, settings
from hypothesis import strategies as st
from test_hostile import NAME, TIMEOUT, Case, assert_refused_cleanly

from refgen import hub, jsonio, lock, weights
from refgen.errors import IntegrityError, LockError, RefgenError
from refgen.hashing import file_digests
from refgen.spec import load_spec


def _generate(case: Case, *extra: str) -> list[str]:
    return ["generate", "--spec", str(case.setup.spec), *extra]


# --- class 1: a local checkpoint is an input ------------------------------------------------------


def _local(case: Case) -> Path:
    """The tiny checkpoint as plain files in ``base/ckpt``, the spec pointing at it, locked."""
    folder = case.base / "ckpt"
    folder.mkdir()
    for path in case.setup.checkpoint.snapshot.iterdir():
        shutil.copy(path.resolve(), folder / path.name)
    checkpoint = case.setup.checkpoint
    case.edit_spec(
        f'repo = "{checkpoint.repo}"\nrevision = "{checkpoint.revision}"', 'path = "../ckpt"'
    )
    hub.lock(load_spec(case.setup.spec), offline=True)
    return folder


def _local_output(output: str, *extra: str) -> Callable[[Case], list[str]]:
    def apply(case: Case) -> list[str]:
        _local(case)
        case.set_output(output)
        return _generate(case, *extra)

    return apply


def _local_output_dir(case: Case) -> list[str]:
    folder = _local(case)
    return _generate(case, "--output-dir", str(folder / "refs"))  # would be created


def _local_linked_weights(case: Case) -> list[str]:
    """The checkpoint's weights are a link to a file in the output folder: the probe file of
    an output named ``model.json`` there would overwrite them."""
    folder = _local(case)
    weights_file = case.out / "model.safetensors"
    shutil.move(folder / "model.safetensors", weights_file)
    (folder / "model.safetensors").symlink_to(weights_file)
    case.set_output("../out/model.json")
    return _generate(case)


# --- class 2: the lock covers everything the loader reads -----------------------------------------


def _drop_from_lock(name: str, also_from_cache: bool = False) -> Callable[[Case], list[str]]:
    def apply(case: Case) -> list[str]:
        case.edit_lock(lambda d: d.update(files=[f for f in d["files"] if f["path"] != name]))
        if also_from_cache:
            (case.setup.checkpoint.snapshot / name).unlink()
        return _generate(case)

    return apply


def _add_to_cache(name: str, content: bytes) -> Callable[[Case], list[str]]:
    def apply(case: Case) -> list[str]:
        (case.setup.checkpoint.snapshot / name).write_bytes(content)
        return _generate(case)

    return apply


# --- class 4: special files -------------------------------------------------------------------


def _fifo_in_cache(name: str) -> Callable[[Case], list[str]]:
    def apply(case: Case) -> list[str]:
        link = case.setup.checkpoint.snapshot / name
        link.unlink()
        os.mkfifo(link)
        case.edit_lock(lambda d: case.entry(d, name).update(size=None))  # no size to compare
        return _generate(case)

    return apply


def _fifo_spec_in_specs_dir(case: Case) -> list[str]:
    os.mkfifo(case.setup.spec.parent / "zz-pipe.toml")
    return ["generate", "--specs-dir", str(case.setup.spec.parent)]


def _fifo_manifest(case: Case) -> list[str]:
    """generate reads the manifest for its up-to-date check (then refuses to write over it)."""
    manifest = case.out / f"{NAME}.manifest.json"
    manifest.unlink()
    os.mkfifo(manifest)
    return _generate(case)


def _spec_links_to_dev_zero(case: Case) -> list[str]:
    link = case.setup.spec.parent / "zero.toml"
    link.symlink_to("/dev/zero")
    return ["generate", "--spec", str(link)]


def _lock_links_to_dev_zero(case: Case) -> list[str]:
    case.setup.lock.unlink()
    case.setup.lock.symlink_to("/dev/zero")
    return _generate(case)


# --- class 7: hashes before any parse -------------------------------------------------------------


def _tampered_index(case: Case) -> list[str]:
    """A single-file checkpoint with an index naming it; the locked index (no size in the lock,
    so only its hash can tell) replaced by JSON nested 100,000 deep."""
    snapshot_dir = case.setup.checkpoint.snapshot
    from safetensors import safe_open

    with safe_open(str(snapshot_dir / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    index = json.dumps({"weight_map": dict.fromkeys(names, "model.safetensors")}).encode()
    digest = hashlib.sha256(index).hexdigest()
    entry = {"path": weights.INDEX, "sha256": digest, "size": None}
    case.edit_lock(lambda d: d["files"].append(entry))
    (snapshot_dir / weights.INDEX).write_bytes(b"[" * 100_000 + b"]" * 100_000)
    return _generate(case)


# --- class 6: NaN or Inf in the weights -----------------------------------------------------------

VICTIM = "model.layers.1.mlp.down_proj.weight"


def _poisoned(value: float, *extra: str, probes: bool = False) -> Callable[[Case], list[str]]:
    """One element of a weight set to *value* in the cached model.safetensors, the lock
    re-recorded (the checkpoint is what its lock says: only the values are wrong)."""

    def apply(case: Case) -> list[str]:
        from safetensors.torch import load_file, save_file

        blob = (case.setup.checkpoint.snapshot / "model.safetensors").resolve()
        tensors = load_file(blob)
        tensors[VICTIM].view(-1)[7] = value
        save_file(tensors, blob, metadata={"format": "pt"})
        if probes:
            text = case.setup.spec.read_text()
            case.setup.spec.write_text(text + '\n[probes]\nhidden_states = "all"\n')
        digests, size = file_digests(blob, ("sha256", "blake3"))
        entry = {"path": "model.safetensors", "size": size, **digests}
        case.edit_lock(lambda d: case.entry(d, "model.safetensors").update(entry))
        return _generate(case, *extra)

    return apply


# --- class 10: the memory of a forward, before it runs -------------------------------------------


def _long_prompt(case: Case) -> list[str]:
    """6,000 tokens ('q' is one token each) with eager attention under a 1 GB budget: the
    attention matrices alone are 4 heads x 6000^2 x 4 bytes x 2 = 1.15 GB. The tiny checkpoint
    (as a local folder) is given a context long enough for the prompt."""
    folder = case.base / "ckpt"
    folder.mkdir()
    for path in case.setup.checkpoint.snapshot.iterdir():
        shutil.copy(path.resolve(), folder / path.name)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"max_position_embeddings": 40960}))
    checkpoint = case.setup.checkpoint
    case.edit_spec(
        f'repo = "{checkpoint.repo}"\nrevision = "{checkpoint.revision}"', 'path = "../ckpt"'
    )
    case.edit_spec('attn_implementation = "sdpa"', 'attn_implementation = "eager"')
    text = case.setup.spec.read_text()
    start = text.index("prompts = [")
    end = text.index("]", start)
    case.setup.spec.write_text(text[:start] + f'prompts = ["{"q" * 6000}"' + text[end:])
    hub.lock(load_spec(case.setup.spec), offline=True)
    return _generate(case, "--load", "memory", "--memory-budget", "1GB")


# (id, prepare -> CLI arguments, exit code, what the message must name, extra environment)
CASES: list[tuple[str, Callable[[Case], list[str]], int, tuple[str, ...], dict[str, str]]] = [
    # class 1: a local checkpoint's folder and every file its lock names are inputs
    ("local checkpoint: output = its config.json", _local_output("../ckpt/config.json"), 2,
     ("config.json", "checkpoint's folder"), {}),
    ("local checkpoint: output = its tokenizer.json", _local_output("../ckpt/tokenizer.json"),
     2, ("tokenizer.json", "checkpoint's folder"), {}),
    ("local checkpoint: probe file = its model.safetensors", _local_output("../ckpt/model.json"),
     2, ("ckpt", "model.json", "checkpoint's folder"), {}),
    ("local checkpoint: --output-dir inside it", _local_output_dir, 2,
     ("refs", "checkpoint's folder"), {}),
    ("local checkpoint: weights linked from the output folder", _local_linked_weights, 2,
     ("model.safetensors", "an input of this run"), {}),
    # class 2: a run reads locked files only, and every file the loader needs is locked
    ("lock omits tokenizer.json", _drop_from_lock("tokenizer.json"), 2,
     ("tokenizer.json", "does not name", "refgen lock"), {}),
    ("lock omits config.json", _drop_from_lock("config.json"), 2,
     ("config.json", "does not name"), {}),
    ("a loader file added to the cache behind the lock's back",
     _add_to_cache("chat_template.jinja", b"{{ 'injected' }}"), 2,
     ("chat_template.jinja", "does not name"), {}),
    ("lock and cache both lack tokenizer.json", _drop_from_lock("tokenizer.json", True), 2,
     ("tokenizer.json", "no vocabulary file", "Qwen2Tokenizer"), {}),
    # class 4: special files are refused, never read, never waited on
    ("FIFO as a cached model file", _fifo_in_cache("tokenizer.json"), 2,
     ("tokenizer.json", "FIFO", "not a regular file"), {}),
    ("FIFO as a spec in --specs-dir", _fifo_spec_in_specs_dir, 2,
     ("zz-pipe.toml", "FIFO"), {}),
    ("FIFO as the manifest: generate", _fifo_manifest, 2,
     (f"{NAME}.manifest.json", "not a regular file"), {}),
    ("spec is a link to /dev/zero", _spec_links_to_dev_zero, 2,
     ("/dev/zero", "character device"), {}),
    ("lock is a link to /dev/zero", _lock_links_to_dev_zero, 2,
     ("tiny-qwen3.lock.json", "character device"), {}),
    # class 6: a weight that is NaN or infinite, named as it is loaded; nothing written
    ("NaN in a weight, in memory", _poisoned(math.nan, "--load", "memory"), 5,
     (VICTIM, "nan", "element 7", "model.safetensors"), {}),
    ("Inf in a weight, streamed", _poisoned(math.inf, "--load", "stream"), 5,
     (VICTIM, "inf", "element 7"), {}),
    ("NaN in a weight, with probes", _poisoned(-math.nan, probes=True), 5, (VICTIM, "nan"), {}),
    # class 10: a prompt whose forward cannot fit the memory budget, refused before it runs
    ("a 6,000-token prompt, eager attention, 1 GB budget", _long_prompt, 2,
     ("6000 tokens", "eager attention", "attention matrices 1.", "memory budget of 1.00 GB",
      "sdpa"), {}),
    # classes 9 and 13: crosscheck's arguments
    ("crosscheck --bench -1", lambda c: ["crosscheck", "--bench", "-1"], 2,
     ("--bench", "-1"), {}),
    ("crosscheck --jobs 0", lambda c: ["crosscheck", "--jobs", "0"], 2, ("--jobs", "0"), {}),
    ("crosscheck --work-dir naming a file",
     lambda c: ["crosscheck", "--cpus", "native", "--work-dir", str(c.setup.spec)], 2,
     ("--work-dir", "tiny-qwen3.toml", "not a folder"), {}),
    ("crosscheck --cpus with an unknown CPU model",
     lambda c: ["crosscheck", "--cpus", "Haswell-v4,Pentium-9000"], 2,
     ("unknown CPU model", "Pentium-9000", "-cpu help"), {}),
    # class 7: an index is checked against the lock before it is parsed
    ("index tampered (nested 100,000 deep)", _tampered_index, 3,
     (weights.INDEX, "does not match the lock"), {}),
]  # fmt: skip


@pytest.fixture
def case(tiny_copy: TinySetup, tmp_path: Path) -> Case:
    return Case.with_old_artifact(tiny_copy, tmp_path)


@pytest.mark.parametrize(
    ("prepare", "code", "names", "env"), [pytest.param(*c[1:], id=c[0]) for c in CASES]
)
def test_hostile_input_is_refused_cleanly(
    case: Case,
    prepare: Callable[[Case], list[str]],
    code: int,
    names: tuple[str, ...],
    env: dict[str, str],
) -> None:
    assert_refused_cleanly(case, prepare(case), code, names, env)


# --- in-process: the bounded reader and the verified read -----------------------------------------


def _unblocked(fifo: Path, call: Callable[[], Any]) -> BaseException | None:
    """What *call* raised, run on a thread of its own: a reader that blocks on *fifo* fails the
    test after 10 s (a writer then opens and closes the FIFO, which ends the blocked read)
    instead of hanging it."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(call)
        try:
            return running.exception(timeout=10)
        except TimeoutError:
            with open(fifo, "wb"):
                pass
            pytest.fail(f"reading {fifo} blocked")


def test_bounded_reader_refuses_special_files_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # no writer: a blocking open would never return
    link = tmp_path / "zero"
    link.symlink_to("/dev/zero")
    for path, what in ((fifo, "FIFO"), (link, "character device"), (tmp_path, "folder")):
        error = _unblocked(fifo, functools.partial(jsonio.read_bytes, path))
        assert isinstance(error, jsonio.NotRegularFileError), error
        assert what in str(error)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    with pytest.raises(jsonio.TooLargeError, match="101 bytes, over the 100-byte limit"):
        jsonio.read_bytes(big, limit=100)
    assert jsonio.read_bytes(big, limit=101) == b"x" * 101


def test_fifo_manifest_is_a_finding_for_the_auditor(tmp_path: Path) -> None:
    """What verify and the up-to-date check read first: a FIFO is named, never waited on."""
    from refgen import audit

    manifest = tmp_path / f"{NAME}.manifest.json"
    os.mkfifo(manifest)
    error = _unblocked(manifest, lambda: audit.read_manifest(manifest))
    assert isinstance(error, RefgenError) and "FIFO" in str(error), error
    spec = load_spec(write_spec_text(tmp_path, MINIMAL_SPEC))
    statuses: list[audit.UpToDate] = []
    assert (
        _unblocked(manifest, lambda: statuses.append(audit.is_up_to_date(spec, manifest))) is None
    )
    (status,) = statuses
    assert not status.current and any("FIFO" in r for r in status.reasons), status.reasons


def test_verified_read_checks_the_hash_before_anyone_parses(tmp_path: Path) -> None:
    good = b'{"weight_map": {"a": "model.safetensors"}}'
    entry = lock.LockedFile(weights.INDEX, hashlib.sha256(good).hexdigest(), len(good))
    (tmp_path / weights.INDEX).write_bytes(good)
    assert hub.read_verified(tmp_path, entry) == good
    (tmp_path / weights.INDEX).write_bytes(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(IntegrityError, match="does not match the lock"):
        hub.read_verified(tmp_path, entry)


def test_deep_index_is_a_checkpoint_error_not_a_recursion_error(tmp_path: Path) -> None:
    (tmp_path / weights.INDEX).write_bytes(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(RefgenError, match="nested"):
        weights.named_weights([weights.INDEX], tmp_path)


# --- property: any lock text gives a lock and a check result, or a LockError ---------------------


VALID_LOCK_TEXT = json.dumps(
    {
        "schema": lock.LOCK_SCHEMA,
        "repo": "org/name",
        "revision": "0" * 40,
        "files": [
            {"path": "config.json", "sha256": "a" * 64, "size": 2, "blake3": "b" * 64},
            {"path": "model.safetensors", "sha256": "c" * 64, "size": None},
        ],
    },
    indent=2,
)


@st.composite
def lock_texts(draw: st.DrawFn) -> bytes:
    """Random bytes, or a valid lock's text with a random stretch replaced by random text."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    start = draw(st.integers(0, len(VALID_LOCK_TEXT)))
    end = draw(st.integers(start, min(len(VALID_LOCK_TEXT), start + 40)))
    middle = draw(st.text(max_size=20))
    text = VALID_LOCK_TEXT[:start] + middle + VALID_LOCK_TEXT[end:]
    return text.encode("utf-8", "surrogatepass")


@settings(max_examples=200, deadline=None)
@given(raw=lock_texts())
def test_property_any_lock_text(raw: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Any bytes as a lock file: read_lock returns a lock whose check against a folder gives a
    LockCheck accounting for every locked file, or it raises LockError (never another
    exception); what it accepts keeps every path inside the snapshot."""
    folder = tmp_path_factory.mktemp("lock-text")
    spec_path = folder / "spec.toml"
    spec_path.write_text(
        'schema = 1\n[reference]\nname = "x"\noutput = "x.json"\n'
        f'[model]\nrepo = "org/name"\nrevision = "{"0" * 40}"\n[run]\nprompts = ["a"]\n'
    )
    spec = load_spec(spec_path)
    spec.lock_path.write_bytes(raw)
    try:
        result = lock.read_lock(spec)
    except LockError:
        return
    for f in result.files:
        assert lock.entry_problem(vars(f)) is None
    (folder / "config.json").write_text("{}")
    checked = lock.check_folder(result.files, folder, progress=False)
    assert isinstance(checked, lock.LockCheck)
    assert set(checked.missing) | set(checked.matched) | {m.path for m in checked.mismatched} == {
        f.path for f in result.files
    }


# --- class 7: safetensors headers and probe files through the bounded readers -------------------


def _safetensors(header: dict[str, Any] | str, data: bytes) -> bytes:
    raw = header if isinstance(header, str) else json.dumps(header)
    return struct.pack("<Q", len(raw.encode())) + raw.encode() + data


ONE = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
TWO = {
    "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
    "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},  # 4 bytes between: a gap
}


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (_safetensors(ONE, b"\0" * 8), None),
        (_safetensors('{"w": ' + "[" * 100_000 + "]" * 100_000 + "}", b""), "nested"),
        (_safetensors(ONE, b"\0" * 8 + b"trailing"), "8 bytes after the last tensor"),
        (_safetensors(TWO, b"\0" * 12), "safetensors library refuses it"),
    ],
    ids=["valid", "header nested 100,000 deep", "trailing bytes", "a gap between tensors"],
)
def test_safetensors_header(tmp_path: Path, content: bytes, needle: str | None) -> None:
    from refgen.load.files import read_header

    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    if needle is None:
        assert [e.name for e in read_header(path)] == ["w"]
        return
    with pytest.raises(IntegrityError, match=needle):
        read_header(path)


def test_safetensors_header_of_a_fifo_never_blocks(tmp_path: Path) -> None:
    from refgen.load.files import read_header

    os.mkfifo(tmp_path / "model.safetensors")
    with pytest.raises(IntegrityError, match="FIFO"):
        read_header(tmp_path / "model.safetensors")


@pytest.mark.parametrize("where", ["header", "metadata"])
def test_probe_file_nested_deep_is_a_probe_file_error(tmp_path: Path, where: str) -> None:
    """What verify and diff read: a tampered probe file is a finding (ProbeFileError), never a
    RecursionError."""
    from refgen import probes

    deep = "[" * 100_000 + "]" * 100_000
    if where == "header":
        content = _safetensors('{"x": ' + deep + "}", b"")
    else:
        metadata = {"__metadata__": {probes.METADATA_KEY: deep}}
        content = _safetensors(metadata, b"")
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(probes.ProbeFileError, match="nested"):
        probes.read(path)


def test_first_layer_whose_output_is_not_finite_is_named(tmp_path: Path) -> None:
    """Finite weights can overflow (float16): the first non-finite hidden state names its layer
    and, in memory, the parameters of that layer that are not finite."""
    from types import SimpleNamespace

    import torch

    from refgen.errors import NonFiniteError
    from refgen.generate import check_finite_outputs

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(4, 2)
            self.layers = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(3))
            self.head = torch.nn.Linear(2, 4)

        def get_input_embeddings(self) -> torch.nn.Module:
            return self.embed

        def get_output_embeddings(self) -> torch.nn.Module:
            return self.head

    model = Model()
    layer: Any = model.layers[1]
    with torch.no_grad():
        layer.weight[0, 0] = math.inf
    spec = load_spec(write_spec_text(tmp_path, MINIMAL_SPEC))
    ok = torch.zeros(1, 3, 2)
    bad = torch.full((1, 3, 2), math.nan)
    out = SimpleNamespace(hidden_states=(ok, ok, bad, bad), logits=torch.zeros(1, 3, 4))
    with pytest.raises(NonFiniteError, match=r"decoder layer 1 \(hidden_states\[2\]\).*weight"):
        check_finite_outputs(spec, 0, out, model)
    out = SimpleNamespace(hidden_states=(ok, ok, ok, ok), logits=torch.full((1, 3, 4), math.inf))
    with pytest.raises(NonFiniteError, match="the logits"):
        check_finite_outputs(spec, 0, out, model)
    check_finite_outputs(spec, 0, SimpleNamespace(hidden_states=(ok,), logits=ok), model)


def test_forward_memory_of_a_32000_token_prompt() -> None:
    """The issue's case: 32,000 positions, the tiny Qwen3's 4 heads in float32: 16.4 GB per copy
    of the attention matrix (two copies and the mask counted); blocked (SDPA) attention has no
    length-squared term; a half dtype's softmax in float32 is counted."""
    from types import SimpleNamespace

    from refgen import activations, tiny

    config = SimpleNamespace(**tiny.CONFIG)
    eager = activations.forward_memory(config, 32_000, "float32", "eager")
    assert eager.attention == 4 * 32_000**2 * 4 * 2 + 32_000**2 * 4
    assert eager.attention > 2 * 16.4e9
    assert eager.hidden_states == 3 * 32_000 * 64 * 4
    assert eager.logits == 32_000 * 512 * 4
    sdpa = activations.forward_memory(config, 32_000, "float32", "sdpa")
    assert sdpa.attention == 0 and sdpa.total < 1e9
    half = activations.forward_memory(config, 1000, "bfloat16", "eager")
    assert half.attention == 4 * 1000**2 * (2 * 2 + 4) + 1000**2 * 2


# --- class 13: fetch given a malformed Hub answer ---------------------------------------------


@pytest.fixture
def fake_hub() -> Iterator[Callable[[bytes], str]]:
    """A local HTTP server answering every request with the body given: the endpoint's URL."""
    import http.server
    import threading

    servers: list[http.server.ThreadingHTTPServer] = []

    def serve(body: bytes) -> str:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_HEAD = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1]", b'{"sha": 5, "siblings": "x"}', b'[{"type": "file", "path": 7}]'],
    ids=["not JSON", "a list of numbers", "an object", "a file with a number for a path"],
)
def test_fetch_with_a_malformed_hub_answer_is_one_error_line(
    tiny_copy: TinySetup, tmp_path: Path, fake_hub: Callable[[bytes], str], body: bytes
) -> None:
    endpoint = fake_hub(body)
    result = run_refgen(
        "fetch",
        "--spec",
        tiny_copy.spec,
        hf_home=tmp_path / "empty-hf-home",
        env={"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0"},
        check=False,
        timeout=TIMEOUT,
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("refgen: error: cannot download"), errors
    assert "malformed" in errors[0] and "HF_ENDPOINT" in errors[0], errors
