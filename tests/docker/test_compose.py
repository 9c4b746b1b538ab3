"""Static checks of docker-compose.yml: the Compose Specification JSON schema plus rules it cannot express.

No Docker engine runs here, so the file is checked the way ``docker compose config`` would: YAML (with
anchors and merge keys) → ``${VAR:-default}`` interpolation with an empty environment → JSON-schema
validation against the vendored Compose Specification schema (tests/docker/compose_spec.json, see README.md
there), with checkers for its ``duration`` and ``ports`` formats. Then semantic rules: dependencies, profiles,
health checks, the GPU reservation, volumes, images, the settings' names, the Prometheus targets.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from pancreas.testing import REPO_ROOT

yaml = pytest.importorskip("yaml", reason="PyYAML is in the dev extra: pip install -e '.[dev]'")
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the dev extra: pip install -e '.[dev]'")

REPO = REPO_ROOT
COMPOSE = REPO / "docker-compose.yml"
SCHEMA = Path(__file__).with_name("compose_spec.json")
PROMETHEUS = REPO / "docker" / "prometheus.yml"

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")
_PORT = r"\d+(-\d+)?"
_HOST_IP = r"(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-fA-F:]+\])"
_PORTS = re.compile(rf"^(({_HOST_IP}:)?({_PORT})?:)?{_PORT}(/(tcp|udp|sctp))?$")
#: Entrypoint / load-test variables that are not fields of service.settings.Settings.
EXTRA_PANCREAS_VARS = {"PANCREAS_ENGINE", "PANCREAS_ENGINE_PRECISION", "PANCREAS_ENGINE_CACHE",
                       "PANCREAS_ENGINE_RECIPE", "PANCREAS_LOCUST_PAYLOADS"}


def interpolate(value: Any, env: dict[str, str], unset: list[str]) -> Any:
    """Compose-style interpolation of every string (``$$`` escapes ``$``); records variables with no default."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, unset) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, unset) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, default = m.group(1) or m.group(4), m.group(2), m.group(3) or ""
        if name in env and (env[name] or op != ":-"):
            return env[name]
        if op in (":-", "-"):
            return default
        unset.append(name)
        return ""

    return _VAR.sub(sub, value)


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def unset_vars(raw: dict[str, Any]) -> list[str]:
    unset: list[str] = []
    interpolate(raw, {}, unset)
    return unset


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    return interpolate(raw, {}, [])


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _validator() -> Any:
    checker = jsonschema.FormatChecker()
    checker.checks("duration")(lambda v: not isinstance(v, str) or bool(_DURATION.match(v)))
    checker.checks("ports")(lambda v: not isinstance(v, str) or bool(_PORTS.match(v)))
    checker.checks("expose")(lambda v: not isinstance(v, str) or bool(re.match(rf"^{_PORT}(/\w+)?$", v)))
    schema = json.loads(SCHEMA.read_text())
    return jsonschema.Draft7Validator(schema, format_checker=checker)


def test_vendored_schema_is_the_recorded_upstream_copy() -> None:
    """The schema is the upstream file byte for byte (sha256 recorded in README.md), so no local edit can loosen
    what the compose file is validated against; and it is a valid Draft 7 schema."""
    recorded = re.search(r"sha256 `([0-9a-f]{64})`", SCHEMA.with_name("README.md").read_text())
    assert recorded, "tests/docker/README.md must record the vendored schema's sha256"
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == recorded.group(1)
    jsonschema.Draft7Validator.check_schema(json.loads(SCHEMA.read_text()))


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    errors = sorted(_validator().iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_validator_rejects_broken_files(compose: dict[str, Any]) -> None:
    """The check can fail: a typo'd key, a bad duration and a bad port mapping are each caught."""
    validator = _validator()
    for mutate in (lambda s: s.__setitem__("healthchek", {}),
                   lambda s: s["healthcheck"].__setitem__("interval", "15 seconds"),
                   lambda s: s.__setitem__("ports", ["80:80:80:80"]),
                   lambda s: s["deploy"]["resources"]["reservations"].__setitem__("gpus", 1)):
        broken = json.loads(json.dumps(compose))
        mutate(broken["services"]["service"])
        assert list(validator.iter_errors(broken)), mutate


def test_every_variable_has_a_default(unset_vars: list[str]) -> None:
    """`docker compose up` must work with no .env file."""
    assert not unset_vars, f"variables without a default: {sorted(set(unset_vars))}"


def test_depends_on_targets_exist_and_profiles_are_compatible(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        deps = {d: {"condition": "service_started"} for d in deps} if isinstance(deps, list) else deps
        mine = set(svc.get("profiles", []))
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on undefined service {dep}"
            theirs = set(services[dep].get("profiles", []))
            # Compose enables a dependency only if it has no profile or shares an enabled one.
            assert not theirs or (mine & theirs), f"{name} {sorted(mine)} depends on {dep} {sorted(theirs)}"
            condition = spec.get("condition", "service_started")
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy: no healthcheck"
            if condition == "service_completed_successfully":
                assert services[dep].get("restart", "no") == "no", f"{dep} is a one-shot job: restart must be no"


def test_long_running_services_have_healthcheck_restart_and_limits(services: dict[str, dict[str, Any]]) -> None:
    for name in ("service", "service-cpu", "prometheus"):
        svc = services[name]
        assert svc["healthcheck"]["test"], name
        assert svc["restart"] in ("always", "unless-stopped", "on-failure"), name
    for name in ("service", "service-cpu"):
        limits = services[name]["deploy"]["resources"]["limits"]
        assert limits["cpus"] and limits["memory"], name
        assert "8000" in services[name]["ports"][0].split(":")[-1], name


def test_gpu_service_reserves_an_nvidia_gpu(services: dict[str, dict[str, Any]]) -> None:
    for name in ("service", "engine-build"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) and d.get("count", 0) >= 1
                   for d in devices), name
        assert "profiles" not in services[name], f"{name} must start with a plain `docker compose up`"
    assert "deploy" not in services["service-cpu"] or "reservations" not in services["service-cpu"]["deploy"][
        "resources"], "the cpu profile must not need a GPU"


def test_load_generators_target_the_service_they_wait_for(services: dict[str, dict[str, Any]]) -> None:
    for name, target in (("locust", "service"), ("locust-cpu", "service-cpu")):
        svc = services[name]
        assert svc["depends_on"][target]["condition"] == "service_healthy"
        assert svc["environment"]["LOCUST_HOST"] == f"http://{target}:8000"
        assert svc["profiles"], f"{name} must not start with a plain `docker compose up`"


def test_named_volumes_are_declared_and_bind_sources_exist(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes", {}))
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                if source != "./models":  # created by compose on first start; holds the user's bundles
                    assert (REPO / source).exists(), f"{name}: bind source {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared under volumes:"


def test_images_are_pinned_and_builds_are_consistent(services: dict[str, dict[str, Any]]) -> None:
    builds: dict[str, Any] = {}
    for name, svc in services.items():
        image = svc["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image tag ({image})"
        if "build" in svc:
            assert (REPO / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file(), name
            assert builds.setdefault(image, svc["build"]) == svc["build"], f"{image} is built two ways"


def test_settings_names_match_the_service(services: dict[str, dict[str, Any]]) -> None:
    """Every PANCREAS_* variable is a Settings field (or an entrypoint/load-test variable): no silent typos."""
    from service.settings import Settings

    known = {f"PANCREAS_{f.upper()}" for f in Settings.model_fields} | EXTRA_PANCREAS_VARS
    for name, svc in services.items():
        unknown = {k for k in svc.get("environment", {}) if k.startswith("PANCREAS_")} - known
        assert not unknown, f"{name}: unknown settings {sorted(unknown)}"


def test_compose_settings_defaults_parse(services: dict[str, dict[str, Any]], monkeypatch) -> None:
    """The service's interpolated PANCREAS_* defaults load as Settings; TTA follows the bundle by default."""
    from service.settings import Settings

    served = {name: svc for name, svc in services.items() if "PANCREAS_TTA" in svc.get("environment", {})}
    assert served, "no compose service sets PANCREAS_TTA"
    for name, svc in served.items():
        env = {k: str(v) for k, v in svc.get("environment", {}).items() if k.startswith("PANCREAS_")}
        for key, value in env.items():
            if key != "PANCREAS_BUNDLE" or value:  # empty PANCREAS_BUNDLE: the image's demo bundle
                monkeypatch.setenv(key, value)
        settings = Settings()
        assert settings.tta is None, f"{name}: PANCREAS_TTA={env['PANCREAS_TTA']!r} should follow the bundle"
        assert settings.engine_config().tta is None
        assert settings.scales is None and settings.engine_config().scales is None, f"{name}: scales follow the bundle"
        assert settings.mirror_axes is None and settings.engine_config().mirror_axes is None, name
        monkeypatch.setenv("PANCREAS_TTA", "false")
        assert Settings().tta is False
        monkeypatch.setenv("PANCREAS_SCALES", "1,1.25")
        assert Settings().engine_config().scales == (1.0, 1.25)
        monkeypatch.setenv("PANCREAS_SCALES", "1")
        assert Settings().scales == (1.0,)


def copied_files(dockerfile_text: str) -> set[str]:
    """Container paths of the files the final stage COPYs from the build context."""
    final = dockerfile_text.split("\nFROM ")[-1]
    paths = set()
    for line in re.findall(r"^COPY (?!--from)(.+)$", final, re.MULTILINE):
        *sources, dest = line.split()
        paths |= {dest + Path(src).name if dest.endswith("/") else dest for src in sources}
    return paths


def test_container_entrypoint_paths_exist_in_the_images(services: dict[str, dict[str, Any]]) -> None:
    copied = {dockerfile: copied_files((REPO / dockerfile).read_text())
              for dockerfile in ("docker/Dockerfile", "docker/Dockerfile.cpu")}
    for name, svc in services.items():
        if "build" not in svc:
            continue
        used = set(re.findall(r"/opt/pancreas/[\w.]+", json.dumps([svc.get("entrypoint"), svc.get("healthcheck")])))
        missing = used - copied[svc["build"]["dockerfile"]]
        assert not missing, f"{name} uses {missing}, not copied by {svc['build']['dockerfile']}"


def test_prometheus_scrapes_the_services() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "pancreas")
    assert job["metrics_path"] == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets
    for target in targets:
        host, port = target.split(":")
        assert host in services and port == "8000", target
    assert _DURATION.match(config["global"]["scrape_interval"])
