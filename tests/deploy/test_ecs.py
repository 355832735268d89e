"""deploy/ecs: the Fargate task definition and service (docs/deploy.md).

Validated offline against the ECS API model that botocore ships (no AWS account, no network),
and compared with the Dockerfile (EXPOSE, USER, the venv in /opt/iap) and with the config the
task runs (deploy/ecs/iap.yaml: the listener and admin ports, the secret files).
"""

from __future__ import annotations

import ast
import copy
import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from botocore.exceptions import ParamValidationError
from botocore.session import get_session
from botocore.validate import validate_parameters

from iap import config
from iap.adapters.signing_keys import write_new_key
from iap.environment import CLIENT_SECRET_VAR, SESSION_KEYS_VAR, Environment
from tests.deploy.test_dockerfile import env_of, stages

ROOT = Path(__file__).resolve().parents[2]
ECS = ROOT / "deploy" / "ecs"
Doc = dict[str, Any]

#: Variables iap reads a secret from (iap/environment.py); never in ``environment``.
SECRET_VARIABLES = {CLIENT_SECRET_VAR, SESSION_KEYS_VAR}
SECRET_WORDS = ("SECRET", "PASSWORD", "KEY", "TOKEN", "CREDENTIAL")


def load(name: str) -> Doc:
    document: Doc = json.loads((ECS / name).read_text(encoding="utf-8"))
    return document


def validate(operation: str, document: Doc) -> None:
    shape = get_session().get_service_model("ecs").operation_model(operation).input_shape
    validate_parameters(document, shape)


def container(task: Doc, name: str) -> Doc:
    (found,) = [c for c in task["containerDefinitions"] if c["name"] == name]
    return found


def ecs_document() -> Doc:
    document: Doc = yaml.safe_load((ECS / "iap.yaml").read_text(encoding="utf-8"))
    return document


def ecs_config() -> config.Config:
    """deploy/ecs/iap.yaml, validated as `iap check` does, its secret files (which only the
    init container writes) stood in for by empty ones."""
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "signing-keys").mkdir()
        (Path(directory) / "redis.password").touch()
        text = (ECS / "iap.yaml").read_text(encoding="utf-8").replace("/run/iap", directory)
        environment = Environment(client_secret="s", session_keys="k")
        return config.parse(yaml.safe_load(text), environment)


def dockerfile() -> tuple[set[int], str]:
    """The final stage's EXPOSEd ports and its USER."""
    final = stages()[1][-1]
    ports = {int(word.split("/")[0]) for args in final.args("EXPOSE") for word in args.split()}
    (user,) = final.args("USER")
    return ports, user


def test_the_image_leaves_the_health_check_and_environment_to_the_task(task: Doc) -> None:
    """The Dockerfile has no HEALTHCHECK (the task's is the only one), and the task overrides
    none of the image's ENV (PATH, PYTHONUNBUFFERED for the audit log, ...)."""
    final = stages()[1][-1]
    assert final.args("HEALTHCHECK") == []
    image_env = set(env_of(final))
    assert {"PATH", "PYTHONUNBUFFERED"} <= image_env
    for each in task["containerDefinitions"]:
        assert not {v["name"] for v in each.get("environment", [])} & image_env


def init_files(task: Doc) -> dict[str, str]:
    """Variable -> file of what the init container writes (read from its script)."""
    script = container(task, "iap-init")["command"][0]
    start = script.index("files = ")
    end = script.index("}", start) + 1
    files: dict[str, str] = ast.literal_eval(script[start + len("files = ") : end])
    return files


def problems(task: Doc, service: Doc) -> list[str]:
    """What is wrong with the task and service against the Dockerfile and the config."""
    found: list[str] = []
    cfg = ecs_config()
    ports, user = dockerfile()
    iap, init = container(task, "iap"), container(task, "iap-init")
    listen, admin = cfg.listen.address.port, cfg.admin.address.port
    mapped = {m["containerPort"] for m in iap.get("portMappings", [])}
    if mapped != {listen, admin} or mapped != ports:
        found.append(f"ports {sorted(mapped)}: config {listen}/{admin}, EXPOSE {sorted(ports)}")
    health = " ".join(iap["healthCheck"]["command"])
    if f"http://127.0.0.1:{admin}/healthz" not in health or not health.startswith("CMD /opt/iap/"):
        found.append(f"health check: {health}")
    if iap.get("user") != f"{user}:{user}":
        found.append(f"user {iap.get('user')}: the Dockerfile's USER is {user}")
    balanced = {lb["containerPort"] for lb in service["loadBalancers"]}
    if balanced != {listen}:
        found.append(f"load balancer ports {sorted(balanced)}: only the listener {listen}")
    network = service["networkConfiguration"]["awsvpcConfiguration"]
    if network.get("assignPublicIp") != "DISABLED":
        found.append("assignPublicIp must be DISABLED")
    found += secret_problems(task)
    for each in (iap, init):
        if each.get("readonlyRootFilesystem") is not True:
            found.append(f"{each['name']}: readonlyRootFilesystem")
        if each["logConfiguration"]["logDriver"] != "awslogs":
            found.append(f"{each['name']}: log driver")
    if init.get("essential") is not False or iap.get("dependsOn") != [
        {"containerName": "iap-init", "condition": "SUCCESS"}
    ]:
        found.append("iap must wait for the init container's success, which is not essential")
    if iap["command"] != ["run", "-c", init_files(task)["IAP_CONFIG"]]:
        found.append(f"command {iap['command']}: the config the init container writes")
    return found


def secret_problems(task: Doc) -> list[str]:
    found: list[str] = []
    iap = container(task, "iap")
    for each in task["containerDefinitions"]:
        secret_names = {s["name"] for s in each.get("secrets", [])}
        for variable in each.get("environment", []):
            name = variable["name"]
            if name in SECRET_VARIABLES or any(w in name.upper() for w in SECRET_WORDS):
                found.append(f"{each['name']}: {name} is in environment, not secrets")
            if name in secret_names:
                found.append(f"{each['name']}: {name} is both a secret and in environment")
        for secret in each.get("secrets", []):
            if not secret["valueFrom"].startswith(("arn:aws:secretsmanager:", "arn:aws:ssm:")):
                found.append(f"{each['name']}: {secret['name']} is not from Secrets Manager")
    given = {s["name"] for s in iap.get("secrets", [])}
    if given != SECRET_VARIABLES:
        found.append(f"iap's secrets {sorted(given)}: expected {sorted(SECRET_VARIABLES)}")
    document = ecs_document()
    if document["redis"]["password_file"] not in init_files(task).values():
        found.append("redis.password_file is not written by iap-init")
    script = container(task, "iap-init")["command"][0]
    if f"write(f'{document['tokens']['keys_dir']}/{{n}}.pem'" not in script:
        found.append("tokens.keys_dir is not where iap-init writes the signing keys")
    init_secrets = {s["name"] for s in container(task, "iap-init")["secrets"]}
    if init_secrets != {"IAP_CONFIG", "IAP_SIGNING_KEYS", "IAP_REDIS_PASSWORD"}:
        found.append(f"iap-init's secrets {sorted(init_secrets)}")
    return found


@pytest.fixture
def task() -> Doc:
    return load("task-definition.json")


@pytest.fixture
def service() -> Doc:
    return load("service.json")


def test_task_definition_is_a_valid_register_task_definition_request(task: Doc) -> None:
    validate("RegisterTaskDefinition", task)
    assert task["requiresCompatibilities"] == ["FARGATE"]
    assert task["networkMode"] == "awsvpc"


def test_service_is_a_valid_create_service_request(service: Doc) -> None:
    validate("CreateService", service)
    assert service["launchType"] == "FARGATE"


def test_validation_rejects_a_misspelt_field(task: Doc) -> None:
    broken = copy.deepcopy(task)
    container(broken, "iap")["readOnlyRootFilesystem"] = True  # capital O: not ECS's name
    with pytest.raises(ParamValidationError, match="readOnlyRootFilesystem"):
        validate("RegisterTaskDefinition", broken)


def test_task_matches_the_dockerfile_and_the_config(task: Doc, service: Doc) -> None:
    assert problems(task, service) == []


def test_a_secret_moved_into_environment_is_refused(task: Doc, service: Doc) -> None:
    iap = container(task, "iap")
    secret = iap["secrets"].pop(0)
    iap["environment"].append({"name": secret["name"], "value": "in the clear"})
    found = problems(task, service)
    assert f"iap: {secret['name']} is in environment, not secrets" in found
    assert any(p.startswith("iap's secrets") for p in found)


def test_a_wrong_port_is_refused(task: Doc, service: Doc) -> None:
    container(task, "iap")["portMappings"][0]["containerPort"] = 8080
    assert any(p.startswith("ports [8080, 9090]") for p in problems(task, service))


def test_the_admin_port_behind_the_load_balancer_is_refused(task: Doc, service: Doc) -> None:
    service["loadBalancers"].append({**service["loadBalancers"][0], "containerPort": 9090})
    service["networkConfiguration"]["awsvpcConfiguration"]["assignPublicIp"] = "ENABLED"
    found = problems(task, service)
    assert "load balancer ports [8443, 9090]: only the listener 8443" in found
    assert "assignPublicIp must be DISABLED" in found


def test_a_root_user_or_a_writable_root_is_refused(task: Doc, service: Doc) -> None:
    container(task, "iap")["user"] = "0"
    container(task, "iap")["readonlyRootFilesystem"] = False
    found = problems(task, service)
    assert "user 0: the Dockerfile's USER is 10001" in found
    assert "iap: readonlyRootFilesystem" in found


@pytest.mark.skipif(os.geteuid() != 0, reason="the init script hands files to uid 10001: root")
def test_init_script_writes_files_iap_check_accepts(task: Doc, tmp_path: Path) -> None:
    """The init container's script, run for real with its paths moved under tmp_path: the
    files are uid 10001's, mode 0600 (directories 0700), each signing key dated as the
    secret says, and `iap check` accepts the result."""
    script = container(task, "iap-init")["command"][0]
    run, scratch = tmp_path / "run", tmp_path / "tmp"
    scratch.mkdir()
    pems = [write_new_key(tmp_path / "keys")[1].read_text() for _ in range(2)]
    created = [1_700_000_000, 1_700_864_000]  # the older key, and one made ten days later
    keys = [{"created": when, "pem": pem} for when, pem in zip(created, pems, strict=True)]
    document = (ECS / "iap.yaml").read_text(encoding="utf-8").replace("/run/iap", str(run))
    env = {
        **os.environ,
        "IAP_CONFIG": document,
        "IAP_SIGNING_KEYS": json.dumps(keys),
        "IAP_REDIS_PASSWORD": "redis-password",
    }
    moved = script.replace("/run/iap", str(run)).replace("'/tmp'", repr(str(scratch)))
    subprocess.run([sys.executable, "-c", moved], env=env, check=True, timeout=60)
    key_files = [run / "signing-keys" / f"{n}.pem" for n in range(2)]
    written = [run / "iap.yaml", run / "redis.password", *key_files]
    for path in [scratch, run, run / "signing-keys", *written]:
        status = path.stat()
        mode = 0o700 if stat.S_ISDIR(status.st_mode) else 0o600
        assert (stat.S_IMODE(status.st_mode), status.st_uid, status.st_gid) == (mode, 10001, 10001)
    assert (run / "redis.password").read_text() == "redis-password"
    assert [path.read_text() for path in key_files] == pems
    assert [path.stat().st_mtime for path in key_files] == created
    checked = subprocess.run(
        [sys.executable, "-m", "iap", "check", "-c", str(run / "iap.yaml")],
        env={**os.environ, SESSION_KEYS_VAR: "k" * 43, CLIENT_SECRET_VAR: "secret"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (checked.returncode, checked.stderr) == (0, "")
