"""The deployment files, checked without Docker, a cloud or a network.

docker-compose.yml against the Compose Specification's schema (tests/schemas/), the Ray
launcher configs against Ray's own ray-schema.json, the KubeRay manifests by shape; then the
mistakes no schema catches and that would only show at deploy time: a secret written out, a
variable .env.example does not name, a GPU worker without a GPU, a Host header MLflow refuses,
an option the plaster CLI does not have.
"""

import copy
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[2]
ENV_EXAMPLE = ROOT / ".env.example"
RAY_SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
LAUNCHER_CONFIGS = ["clusters/aws.yaml", "clusters/gcp.yaml", "clusters/local.yaml"]
CLOUD_CONFIGS = ["clusters/aws.yaml", "clusters/gcp.yaml"]
KUBERAY = {"RayCluster": "clusters/kuberay/raycluster.yaml", "RayJob": "clusters/kuberay/rayjob.yaml"}

SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|KEY")
# ${VAR}, ${VAR:?msg}, ${VAR:-default}... but not $${VAR}, compose's escape for the container's shell.
INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}")
DURATION = re.compile(r"([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+")
URL_PASSWORD = re.compile(r"://[^:/@\s]+:(\$\{[^}]*\}|[^@\s]+)@")


# ---- loading -------------------------------------------------------------------------------

def load(rel: str):
    return yaml.safe_load((ROOT / rel).read_text())


def load_all(rel: str) -> list:
    return [d for d in yaml.safe_load_all((ROOT / rel).read_text()) if d is not None]


def errors(validator: jsonschema.protocols.Validator, instance) -> list[str]:
    """Every schema violation, one line each (the most specific reason of each), all at once."""
    found = [jsonschema.exceptions.best_match([e]) for e in validator.iter_errors(instance)]
    return sorted(f"{e.json_path}: {e.message}" for e in found)


def compose_validator() -> jsonschema.Draft201909Validator:
    # The schema says draft 2019-09 under a URI jsonschema does not recognise (tests/schemas/README.md).
    schema = json.loads((ROOT / "tests" / "schemas" / "compose-spec.json").read_text())
    formats = jsonschema.FormatChecker(formats=())
    formats.checks("duration")(lambda v: not isinstance(v, str) or DURATION.fullmatch(v) is not None)
    return jsonschema.Draft201909Validator(schema, format_checker=formats)


def ray_validator():
    schema = json.loads(RAY_SCHEMA.read_text())
    return jsonschema.validators.validator_for(schema)(schema)


@pytest.fixture(scope="module")
def compose() -> dict:
    return load("docker-compose.yml")


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


# ---- compose helpers -------------------------------------------------------------------------

def env_of(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def command_of(service: dict) -> str:
    cmd = service.get("command", "")
    return " ".join(cmd) if isinstance(cmd, list) else cmd


def depends_of(service: dict) -> dict:
    deps = service.get("depends_on") or {}
    return {d: {"condition": "service_started"} for d in deps} if isinstance(deps, list) else deps


def plaster_commands(services) -> dict[str, list[str]]:
    """service -> the arguments of the `plaster` call in its command."""
    found = {}
    for name, svc in services.items():
        args = shlex.split(command_of(svc).replace("&&", " && "))
        if "plaster" in args:
            rest = args[args.index("plaster") + 1:]
            found[name] = rest[:rest.index("&&")] if "&&" in rest else rest
    return found


def strings(node):
    """Every string value of a parsed YAML document (comments are gone, anchors resolved)."""
    if isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)
    elif isinstance(node, str):
        yield node


def env_example_names() -> set[str]:
    lines = (ln.strip() for ln in ENV_EXAMPLE.read_text().splitlines())
    return {ln.split("=", 1)[0] for ln in lines if ln and not ln.startswith("#")}


def is_reference(value) -> bool:
    return isinstance(value, str) and INTERPOLATION.fullmatch(value) is not None


# ---- docker-compose.yml: the schema ------------------------------------------------------------

def test_compose_matches_the_compose_spec(compose):
    assert errors(compose_validator(), compose) == []


@pytest.mark.parametrize("break_it, complaint", [
    (lambda d: d["services"]["postgres"].update(imgae=d["services"]["postgres"].pop("image")),
     "$.services.postgres: 'imgae' does not match"),
    (lambda d: d["services"]["postgres"]["healthcheck"].update(interval="5 seconds"),
     "$.services.postgres.healthcheck.interval: '5 seconds' is not a 'duration'"),
    (lambda d: d["services"]["mlflow"]["depends_on"]["postgres"].update(condition="healthy"),
     "$.services.mlflow.depends_on.postgres.condition: 'healthy' is not one of"),
], ids=["misspelt-key", "bad-duration", "bad-condition"])
def test_compose_validator_rejects_what_compose_would(compose, break_it, complaint):
    broken = copy.deepcopy(compose)
    break_it(broken)
    found = errors(compose_validator(), broken)
    assert len(found) == 1 and found[0].startswith(complaint), found


# ---- docker-compose.yml: what the schema cannot see ----------------------------------------------

def test_no_secret_is_written_in_compose(compose, services):
    written = [f"{name}.{var}" for name, svc in services.items() for var, value in env_of(svc).items()
               if SECRET_NAME.search(var) and not is_reference(value)]
    assert written == [], "secrets must come from .env as ${VAR:?...}"
    passwords = [p for text in strings(compose) for p in URL_PASSWORD.findall(text)]
    assert passwords and all(is_reference(p) for p in passwords), passwords


def test_every_variable_comes_from_env_example_and_is_required(compose):
    used = [ref for text in strings(compose) for ref in INTERPOLATION.findall(text)]
    assert {name for name, _ in used} == env_example_names()
    optional = sorted({name for name, rest in used if not rest.startswith(":?")})
    assert optional == [], "use ${VAR:?set VAR in .env}: compose then refuses to start without it"


def test_depends_on_names_services_that_can_satisfy_it(services):
    for name, svc in services.items():
        for dep, how in depends_of(svc).items():
            assert dep in services, f"{name} depends on {dep}, which is not a service"
            if how["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy; it has no healthcheck"
            if how["condition"] == "service_completed_successfully":
                assert services[dep].get("restart", "no") == "no", f"{dep} is one-shot; it must not restart"


def test_built_services_use_the_repository_dockerfile(services):
    built = {name: svc["build"] for name, svc in services.items() if "build" in svc}
    assert {"mlflow", "ray-head", "ray-gpu-worker", "plaster-scheduler", "plaster-server"} <= set(built)
    declared_args = set(re.findall(r"^ARG (\w+)", (ROOT / "Dockerfile").read_text(), re.M))
    for name, build in built.items():
        assert build["dockerfile"] == "Dockerfile" and (ROOT / build["context"] / "Dockerfile").is_file(), name
        assert set(build.get("args") or {}) <= declared_args, f"{name} passes a build arg the Dockerfile lacks"


def test_gpu_worker_reserves_nvidia_gpus(services):
    devices = services["ray-gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


def test_published_ports_bind_the_publish_host_and_env_example_keeps_it_on_loopback(services):
    published = [(name, str(p)) for name, svc in services.items() for p in svc.get("ports", [])]
    assert published and all(p.startswith("${PLASTER_PUBLISH_HOST:?") for _, p in published), published
    lines = dict(ln.split("=", 1) for ln in ENV_EXAMPLE.read_text().splitlines() if ln and not ln.startswith("#"))
    assert lines["PLASTER_PUBLISH_HOST"] == "127.0.0.1"


def test_env_example_sets_no_password():
    lines = dict(ln.split("=", 1) for ln in ENV_EXAMPLE.read_text().splitlines() if ln and not ln.startswith("#"))
    secrets = {k: v for k, v in lines.items() if SECRET_NAME.search(k) and not k.endswith("_ID")}  # key ids name users
    assert secrets and all(v == "" for v in secrets.values()), secrets  # `:?` refuses an empty one


def test_mlflow_sets_allowed_hosts_and_cors(services):
    args = shlex.split(command_of(services["mlflow"]))
    origins = args[args.index("--cors-allowed-origins") + 1].split(",")
    assert origins and "*" not in origins and all(o.startswith("http://") for o in origins)
    assert "*" not in args[args.index("--allowed-hosts") + 1]


def test_mlflow_answers_to_its_service_name(services):
    args = shlex.split(command_of(services["mlflow"]))
    hosts = args[args.index("--allowed-hosts") + 1].split(",")
    assert {"mlflow", "mlflow:5000"} <= set(hosts)  # Host: mlflow:5000 gets 403 otherwise
    assert "http://mlflow:5000" in {env_of(s).get("MLFLOW_TRACKING_URI") for s in services.values()}
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is not installed: name the driver.
    assert args[args.index("--backend-store-uri") + 1].startswith("postgresql+psycopg2://")


def test_minio_init_creates_every_bucket_the_stack_uses(services):
    init = services["minio-init"]
    script = command_of(init)
    made = re.findall(r"mc mb --ignore-existing local/([\w.-]+)", script)  # idempotent: a restart is fine
    assert {"mlflow", "plaster"} <= set(made)
    destination = shlex.split(command_of(services["mlflow"]))
    bucket = destination[destination.index("--artifacts-destination") + 1].removeprefix("s3://").split("/")[0]
    assert bucket in made
    assert depends_of(init)["minio"]["condition"] == "service_healthy"


def test_every_ray_process_presents_the_token(services):
    ray_nodes = {name: svc for name, svc in services.items() if "ray start" in command_of(svc)}
    assert {"ray-head", "ray-gpu-worker", "plaster-scheduler"} <= set(ray_nodes)
    for name, svc in ray_nodes.items():
        env = env_of(svc)
        assert env.get("RAY_AUTH_MODE") == "token" and is_reference(env.get("RAY_AUTH_TOKEN")), name


def test_plaster_commands_exist_in_the_cli(services):
    import typer.main

    from orchestrator.cli import app

    cli = typer.main.get_command(app)
    calls = plaster_commands(services)
    assert calls["plaster-scheduler"][:2] == ["schedule", "pipelines/digits"]
    assert calls["plaster-server"][:2] == ["serve", "pipelines/digits"]
    for name, (command, *args) in calls.items():
        known = {opt for p in cli.commands[command].params for opt in p.opts}
        unknown = [a for a in args if a.startswith("--") and a not in known]
        assert unknown == [], f"{name}: `plaster {command}` has no {unknown}"
        assert all((ROOT / a).is_dir() for a in args if a.startswith("pipelines/")), name
    server = calls["plaster-server"]
    assert server[server.index("--host") + 1] == "0.0.0.0"  # reachable through the published port


def test_dockerfile_and_dockerignore():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    assert re.search(r"pip install -c constraints\.txt torch==2\.13\.0", dockerfile)
    assert re.search(r"pip install -c constraints\.txt \.", dockerfile)
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1] not in {"root", "0"}
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".plaster", "mlruns", "benchmarks/results", ".git", ".env"} <= ignored


# ---- Ray cluster launcher configs ---------------------------------------------------------------

@pytest.mark.parametrize("path", LAUNCHER_CONFIGS)
def test_launcher_config_matches_rays_schema(path):
    assert errors(ray_validator(), load(path)) == []


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS)
def test_launcher_accepts_the_config(path):
    # What `ray up` runs before it touches a cloud: provider defaults, then its own checks.
    # A private API, but Ray is pinned (constraints.txt).
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(load(path)))


@pytest.mark.parametrize("path", CLOUD_CONFIGS)
def test_cloud_config_has_a_gpu_worker_type(path):
    cfg = load(path)
    workers = {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}
    assert any(v["resources"].get("GPU", 0) >= 1 for v in workers.values())
    assert cfg["available_node_types"][cfg["head_node_type"]]["resources"].get("GPU", 0) == 0


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS)
def test_launcher_installs_plaster_and_starts_ray_with_token_auth(path):
    cfg = load(path)
    repo = [remote for remote, local in cfg["file_mounts"].items() if local == "."]
    assert repo, "the repository must be synced to the nodes"
    assert any(f"cd {repo[0]}" in c and "pip install -c constraints.txt -e ." in c for c in cfg["setup_commands"])
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cfg[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), key
    assert not (cfg.get("docker") or {}).get("image"), "docker is off: Ray runs on the nodes themselves"


# ---- KubeRay manifests ----------------------------------------------------------------------------

def kuberay(kind: str) -> dict:
    docs = load_all(KUBERAY[kind])
    assert [(d["apiVersion"], d["kind"]) for d in docs] == [("ray.io/v1", kind)]
    return docs[0]


def ray_cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def containers(doc: dict) -> list[dict]:
    """Every container KubeRay runs for the manifest, the autoscaler sidecar and submitter included."""
    spec = ray_cluster_spec(doc)
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    found = [c for g in groups for c in g["template"]["spec"]["containers"]]
    if spec.get("enableInTreeAutoscaling"):
        found.append({"name": "autoscaler", **spec.get("autoscalerOptions", {})})
    if doc["kind"] == "RayJob":
        found += doc["spec"]["submitterPodTemplate"]["spec"]["containers"]
    return found


def gpus(group: dict) -> int:
    """The nvidia.com/gpu a KubeRay group's pod asks for."""
    pod = group["template"]["spec"]
    return sum(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) for c in pod["containers"])


@pytest.mark.parametrize("kind", KUBERAY)
def test_kuberay_cluster_shape(kind):
    spec = ray_cluster_spec(kuberay(kind))
    assert spec["rayVersion"] == ray.__version__
    assert any(gpus(g) >= 1 for g in spec["workerGroupSpecs"]), "a worker group must request nvidia.com/gpu"
    assert gpus(spec["headGroupSpec"]) == 0
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    claims = {v["persistentVolumeClaim"]["claimName"] for g in groups
              for v in g["template"]["spec"].get("volumes", []) if "persistentVolumeClaim" in v}
    pvcs = {d["metadata"]["name"] for d in load_all("clusters/kuberay/plaster-home-pvc.yaml")}
    assert claims and claims <= pvcs


@pytest.mark.parametrize("kind", KUBERAY)
def test_kuberay_every_container_has_token_auth_from_a_secret(kind):
    for c in containers(kuberay(kind)):
        env = {e["name"]: e for e in c.get("env", [])}
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", c["name"]
        assert "secretKeyRef" in env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}), c["name"]


def test_rayjob_runs_a_plaster_cycle_and_cleans_up():
    spec = kuberay("RayJob")["spec"]
    program, command, pipeline = shlex.split(spec["entrypoint"])
    assert (program, command) == ("plaster", "run")
    assert (ROOT / Path(pipeline).relative_to("/app")).is_dir()  # the image's WORKDIR is /app
    assert re.search(r"^WORKDIR /app$", (ROOT / "Dockerfile").read_text(), re.M)
    env_vars = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    assert {"MLFLOW_TRACKING_URI", "PLASTER_HOME"} <= set(env_vars)
    assert spec["shutdownAfterJobFinishes"] is True
