"""The deployment recipes in cluster/ are checked as far as this machine allows (no Docker
daemon, no Kubernetes, no batch system): the Dockerfile's instructions, the manifests'
structure against what the Dask operator's CRD and the Dask Helm chart require, every
command line in them parsed by this very ``dask`` CLI, and the SLURM job script that
dask-jobqueue writes run as a batch node would run it, joining a cluster that ingests.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from dask.utils import parse_bytes
from distributed.cli.dask_scheduler import main as dask_scheduler_cli
from distributed.cli.dask_worker import main as dask_worker_cli

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
IMAGE = f"mosaicflow-worker:{VERSION}"


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuations joined."""
    text = (CLUSTER / "Dockerfile").read_text()
    joined = re.sub(r"\\\n(\s*#.*\n)*", " ", text)  # continuation lines, comments inside
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            out.append((keyword.upper(), args.strip()))
    return out


def test_dockerfile_builds_a_pinned_non_root_image_of_the_whole_package():
    ins = dockerfile()
    keywords = [k for k, _ in ins]
    assert set(keywords) <= {"FROM", "ENV", "WORKDIR", "COPY", "RUN", "USER", "EXPOSE", "CMD"}
    # one stage, from a pinned Python patch release (never :latest, never a bare minor)
    froms = [a for k, a in ins if k == "FROM"]
    assert len(froms) == 1
    m = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-(\w+)(@sha256:[0-9a-f]{64})?", froms[0])
    assert m, froms[0]
    # the image's Python satisfies the package's requires-python
    need = re.fullmatch(r">=(\d+)\.(\d+)", PYPROJECT["project"]["requires-python"])
    assert need and (int(m[1]), int(m[2])) >= (int(need[1]), int(need[2]))
    # every package the wheel holds is copied, with pyproject.toml, then installed
    packages = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {a.split()[0] for k, a in ins if k == "COPY"}
    assert {"pyproject.toml", *(p.rstrip("*") for p in packages)} <= copied
    runs = " && ".join(a for k, a in ins if k == "RUN")
    assert re.search(r"pip install \.(\s|$)", runs)
    assert "import rasterio, engine, graphs, cluster" in runs  # the build fails if not
    # GDAL settings come from the worker plugin, not from the image
    envs = " ".join(a for k, a in ins if k == "ENV")
    assert not re.search(r"\b(GDAL_|CPL_|VSI_)", envs)
    assert "NUMBA_CACHE_DIR" in envs
    # it runs unprivileged, after installing as root
    users = [i for i, (k, _) in enumerate(ins) if k == "USER"]
    assert users and ins[users[-1]][1] not in ("root", "0")
    assert users[-1] > max(i for i, (k, a) in enumerate(ins) if "pip install" in a)
    # the default command is a worker this dask accepts
    cmd = json.loads(next(a for k, a in ins if k == "CMD"))
    assert cmd[:2] == ["dask", "worker"]
    _parse(dask_worker_cli, cmd[:2], cmd[2:])
    # the build command in its header names the image the manifests use
    assert (
        f"docker build -f cluster/Dockerfile -t {IMAGE} ." in (CLUSTER / "Dockerfile").read_text()
    )


def test_dockerignore_keeps_only_the_package():
    lines = [
        ln.strip()
        for ln in (CLUSTER / "Dockerfile.dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*"  # everything out (.venv, benchmarks/work, tests) ...
    kept = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    copied = {a.split()[0] for k, a in dockerfile() if k == "COPY"}
    assert copied <= kept  # ... except what the Dockerfile copies


def _parse(cli: Any, command: list[str], args: list[str]) -> dict[str, Any]:
    """Parse ``args`` with the real ``dask`` command's option parser (nothing runs).

    The commands pass unknown options on to preload modules, so anything left over (or
    taken for the scheduler address) is an option this dask does not have.
    """
    params: dict[str, Any] = cli.make_context(" ".join(command), list(args)).params
    values = [v for p in params.values() for v in (p if isinstance(p, tuple) else (p,))]
    stray = [v for v in values if isinstance(v, str) and v.startswith("-")]
    assert not params.get("preload_argv") and not stray, f"not options of {command}: {args}"
    return params


def _load(name: str) -> Any:
    return yaml.safe_load((CLUSTER / "kubernetes" / name).read_text())


def _check_pod_spec(spec: dict[str, Any], cli: Any, command: list[str]) -> dict[str, Any]:
    """PodSpec essentials: named containers with our image, args this dask accepts,
    mounts of declared volumes; returns the one container."""
    (container,) = spec["containers"]
    assert container["name"] and container["image"] == IMAGE
    args = container["args"]
    assert args[:2] == command
    _parse(cli, command, [a.replace("$(DASK_WORKER_NAME)", "w") for a in args[2:]])
    volumes = {v["name"] for v in spec.get("volumes", [])}
    assert {m["name"] for m in container.get("volumeMounts", [])} <= volumes
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert limits == requests  # guaranteed QoS: a worker is not evicted mid-ingestion
    return container


def _opt(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_dask_operator_daskcluster_manifest():
    doc = _load("daskcluster.yaml")
    assert doc["apiVersion"] == "kubernetes.dask.org/v1" and doc["kind"] == "DaskCluster"
    name = doc["metadata"]["name"]
    spec = doc["spec"]
    # the operator's CRD: spec requires scheduler and worker; the scheduler requires spec
    # (a PodSpec) and service (a ServiceSpec); the worker requires spec, replicas an int
    assert {"scheduler", "worker"} <= set(spec)
    assert {"spec", "service"} <= set(spec["scheduler"])
    assert isinstance(spec["worker"]["replicas"], int) and spec["worker"]["replicas"] >= 1
    assert isinstance(spec.get("idleTimeout", 0), int)

    worker = _check_pod_spec(spec["worker"]["spec"], dask_worker_cli, ["dask", "worker"])
    args = worker["args"]
    # one thread per CPU the pod gets, Dask's memory limit within the pod's
    assert int(_opt(args, "--nthreads")) == int(worker["resources"]["limits"]["cpu"])
    pod_memory = parse_bytes(worker["resources"]["limits"]["memory"].replace("Gi", "GiB"))
    assert parse_bytes(_opt(args, "--memory-limit")) <= pod_memory
    assert "$(DASK_WORKER_NAME)" in args  # the operator names each worker pod

    scheduler = _check_pod_spec(
        spec["scheduler"]["spec"], dask_scheduler_cli, ["dask", "scheduler"]
    )
    ports = {p["name"]: p["containerPort"] for p in scheduler["ports"]}
    assert ports == {"tcp-comm": 8786, "http-dashboard": 8787}
    assert scheduler["readinessProbe"]["httpGet"]["path"] == "/health"
    service = spec["scheduler"]["service"]
    # the operator labels the scheduler pod; the service must select exactly it
    assert service["selector"] == {
        "dask.org/cluster-name": name,
        "dask.org/component": "scheduler",
    }
    assert {(p["port"], p["targetPort"]) for p in service["ports"]} == {
        (8786, "tcp-comm"),
        (8787, "http-dashboard"),
    }
    # the address the file's header tells users to pass
    header = (CLUSTER / "kubernetes" / "daskcluster.yaml").read_text()
    assert f"--scheduler tcp://{name}-scheduler:8786" in header


# The value keys the Dask Helm chart (dask/dask) reads, from its values.yaml
_HELM_KEYS = {
    "scheduler": {"name", "image", "replicas", "serviceType", "servicePort", "extraArgs",
                  "resources", "tolerations", "affinity", "nodeSelector", "securityContext",
                  "env"},
    "worker": {"name", "image", "replicas", "default_resources", "env", "extraArgs",
               "resources", "mounts", "tolerations", "affinity", "nodeSelector",
               "securityContext", "port", "threads_per_worker"},
    "jupyter": {"enabled"},
    "image": {"repository", "tag", "pullPolicy", "pullSecrets", "dask_worker"},
    "mounts": {"volumes", "volumeMounts"},
}  # fmt: skip


def test_dask_helm_chart_values():
    values = _load("helm-values.yaml")
    assert set(values) <= {"scheduler", "worker", "jupyter", "webUI"}
    for part in ("scheduler", "worker"):
        assert set(values[part]) <= _HELM_KEYS[part], part
        image = values[part]["image"]
        assert set(image) <= _HELM_KEYS["image"]
        assert f"{image['repository']}:{image['tag']}" == IMAGE
        limits = values[part]["resources"]["limits"]
        assert limits == values[part]["resources"]["requests"]
    worker = values["worker"]
    assert set(worker["mounts"]) <= _HELM_KEYS["mounts"]
    names = {v["name"] for v in worker["mounts"]["volumes"]}
    assert {m["name"] for m in worker["mounts"]["volumeMounts"]} <= names
    assert worker["threads_per_worker"] == int(worker["resources"]["limits"]["cpu"])
    # the chart runs `dask-worker`: the image provides that command
    assert worker["image"]["dask_worker"] == "dask-worker"
    assert "dask-$c" in (CLUSTER / "Dockerfile").read_text()
    assert values["jupyter"] == {"enabled": False}


def test_coiled_recipe_uses_the_image_without_coiled_installed():
    from cluster.coiled_example import cluster_options

    opts = cluster_options(workers=3, region="eu-central-1")
    assert opts["container"] == IMAGE and opts["n_workers"] == 3
    assert opts["region"] == "eu-central-1"
    # importing the recipe does not need coiled (only running it does)
    tree = ast.parse((CLUSTER / "coiled_example.py").read_text())
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    assert not any("coiled" in ast.unparse(n) for n in top)


def test_coiled_recipe_options_are_coiled_cluster_parameters():
    coiled = pytest.importorskip("coiled", reason="coiled is not installed (pip install coiled)")
    from cluster.coiled_example import cluster_options

    params = inspect.signature(coiled.Cluster).parameters
    assert set(cluster_options()) <= set(params)


def test_slurm_job_script_joins_a_cluster_that_ingests(tmp_path):
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue is not installed (mosaicflow[hpc])")
    from distributed import Client

    from cluster.hpc.slurm import make_cluster
    from engine import create_image_collection
    from engine.synth import make_scenes

    opts = {"host": "127.0.0.1", "dashboard_address": None}
    with make_cluster(jobs=0, cores=1, memory="2GiB", account="proj", queue="compute",
                      scheduler_options=opts) as cluster:  # fmt: skip
        script = cluster.job_script()
        directives = [ln for ln in script.splitlines() if ln.startswith("#SBATCH")]
        assert "#SBATCH -A proj" in directives and "#SBATCH -p compute" in directives
        assert "#SBATCH --cpus-per-task=1" in directives and "#SBATCH --mem=2G" in directives
        command = script.strip().splitlines()[-1]
        argv = shlex.split(command)
        assert argv[:3] == [sys.executable, "-m", "distributed.cli.dask_worker"]
        assert _opt(argv, "--nthreads") == "1" and argv[3] == cluster.scheduler_address
        # run the job script as a compute node would (its #SBATCH lines are comments)
        (tmp_path / "job.sh").write_text(script)
        job = subprocess.Popen(["bash", str(tmp_path / "job.sh")], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)  # fmt: skip
        try:
            with Client(cluster) as client:
                client.wait_for_workers(1, timeout=60)
                scenes = make_scenes(tmp_path / "scenes", n=2, size=256)
                result = create_image_collection(
                    [str(s) for s in scenes],
                    image_collection=str(tmp_path / "out.zarr"),
                    context={"outSR": 3857},
                    client=client,
                )
                assert result.exit_code == 0 and len(result.complete) == 2
                # the job's worker got the engine's GDAL settings from the plugin
                seen = client.run(lambda: __import__("os").environ.get("GDAL_HTTP_MAX_RETRY"))
                assert list(seen.values()) == ["5"]
        finally:
            os.killpg(job.pid, signal.SIGTERM)  # the job's shell, nanny and worker
            job.wait(timeout=30)
