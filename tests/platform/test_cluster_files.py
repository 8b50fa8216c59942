"""The cluster images and manifests (docker/): no container engine runs here, so what can be checked
without one: the files parse, every command they run names an entry point that exists here (and
only options it has), the services keep the store's and MLflow's tables apart and publish ports on
127.0.0.1 only, and the versions they name are the project's."""
import os
import re
import tomllib
from importlib import metadata

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCKER = os.path.join(REPO, "docker")


def _load(name):
    with open(os.path.join(DOCKER, name)) as f:
        return list(yaml.safe_load_all(f))


def _pins():
    """Package -> version pinned with == in pyproject.toml and in constraints.txt."""
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    deps = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    pinned = dict(m.groups() for d in deps if (m := re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^]]*\])?==([^;\s]+)", d)))
    with open(os.path.join(REPO, "constraints.txt")) as f:
        constraints = dict(line.strip().split("==") for line in f if "==" in line and not line.startswith("#"))
    return project, {k.lower(): v for k, v in pinned.items()}, {k.lower(): v for k, v in constraints.items()}


def _click_options(script, sub):
    if script == "mlflow":
        from mlflow.cli import cli
    else:
        from ray.scripts.scripts import cli
    cmd = cli.commands[sub]
    return {o for p in cmd.params for o in p.opts + p.secondary_opts}


def _check_command(cmd):
    """``cmd`` (a list) names a console script installed here, or ``python -m`` a module of this
    repository; for mlflow and ray, the subcommand and every ``--option`` exist."""
    if cmd[:2] == ["python", "-m"]:
        module = cmd[2].replace(".", os.sep)
        assert os.path.isfile(os.path.join(REPO, module + ".py")), cmd
        return
    scripts = {e.name for e in metadata.entry_points(group="console_scripts")}
    assert cmd[0] in scripts, f"{cmd[0]}: no such entry point"
    assert cmd[0] in ("mlflow", "ray"), cmd
    options = _click_options(cmd[0], cmd[1])
    used = [a for a in cmd[2:] if a.startswith("--")]
    assert set(used) <= options, (cmd, set(used) - options)


def test_compose_services_run_existing_entry_points_and_keep_the_databases_apart():
    (compose,) = _load("compose.yaml")
    services = compose["services"]
    assert {"postgres", "mlflow", "ray-head", "ray-worker"} <= set(services)
    for name, svc in services.items():
        if "command" in svc:
            _check_command(svc["command"])
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)  # published on loopback only
    # scalable workers: nothing that two replicas would fight over
    assert "ports" not in services["ray-worker"] and "container_name" not in services["ray-worker"]
    assert "ray-head:6379" in services["ray-worker"]["command"]
    # every Ray node and the MLflow server see the shared runs volume; PostgreSQL keeps its own
    for name in ("mlflow", "ray-head", "ray-worker", "driver"):
        assert "shared:/shared" in services[name]["volumes"], name
    assert any(v.startswith("pgdata:") for v in services["postgres"]["volumes"])
    assert {"pgdata", "shared"} <= set(compose["volumes"])
    # MLflow in its own database (mlflow), the results store in POSTGRES_DB (detbench): both have "metrics"
    backend = services["mlflow"]["command"][services["mlflow"]["command"].index("--backend-store-uri") + 1]
    assert backend.startswith("postgresql+psycopg://") and backend.endswith("@postgres/mlflow")
    assert services["postgres"]["environment"]["POSTGRES_DB"] == "detbench"
    with open(os.path.join(DOCKER, "postgres-init.sql")) as f:
        assert "CREATE DATABASE mlflow;" in f.read()
    init = "./postgres-init.sql:/docker-entrypoint-initdb.d/"
    assert any(v.startswith(init) for v in services["postgres"]["volumes"])
    (gpu,) = _load("compose.gpu.yaml")
    assert set(gpu["services"]) <= set(services)
    assert gpu["services"]["ray-worker"]["build"]["args"]["DEVICE"] == "cuda"


def test_dockerfile_builds_cpu_and_cuda_with_the_pinned_versions():
    project, _, constraints = _pins()
    with open(os.path.join(DOCKER, "Dockerfile")) as f:
        text = f.read()
    python = re.search(r"ARG PYTHON_VERSION=(\d+)\.(\d+)", text).groups()
    need = re.match(r">=(\d+)\.(\d+)", project["requires-python"]).groups()
    assert tuple(map(int, python)) >= tuple(map(int, need))
    assert "FROM python:${PYTHON_VERSION}-slim" in text
    assert re.search(r"ARG DEVICE=cpu", text) and "cpu)" in text and "cuda)" in text
    install = re.search(r"pip install [^\n]*", text).group(0)
    assert '-c constraints.txt ".[cluster]"' in install  # the pins, and the PostgreSQL driver
    assert "psycopg" in constraints and "psycopg-binary" in constraints


def test_kuberay_cluster_names_the_project_s_ray_and_the_image():
    cluster, claim = _load("kuberay.yaml")
    _, pinned, constraints = _pins()
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    assert cluster["spec"]["rayVersion"] == pinned["ray"] == constraints["ray"] == metadata.version("ray")
    start_options = _click_options("ray", "start")
    groups = [cluster["spec"]["headGroupSpec"]] + cluster["spec"]["workerGroupSpecs"]
    (compose,) = _load("compose.gpu.yaml")
    for group in groups:
        assert {f"--{k}" for k in group["rayStartParams"]} <= start_options
        for container in group["template"]["spec"]["containers"]:
            assert container["image"] == compose["x-cuda"]["image"]  # what compose.gpu.yaml builds
            assert any(m["mountPath"] == "/shared" for m in container["volumeMounts"])
            assert {e["name"] for e in container["env"]} == {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}
            if "command" in container:
                _check_command(container["command"])
    workers = cluster["spec"]["workerGroupSpecs"][0]
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert claim["kind"] == "PersistentVolumeClaim" and claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_pyproject_pins_and_constraints_agree():
    _, pinned, constraints = _pins()
    assert {"torch", "torchvision", "ray", "pycocotools"} <= set(pinned)
    for name, version in pinned.items():
        assert constraints.get(name) == version, name
