"""deploy/k8s: valid Kubernetes objects (offline, strict schemas) with the properties of SPEC §10.

The schemas come from the PyPI package ``kubernetes-validate``; strict mode rejects unknown
fields, so a misspelt security setting fails here rather than being dropped by the API
server. Istio resources (``*.istio.io``, the Component in ``deploy/k8s/istio/``) are not
Kubernetes core kinds: they are validated against the Istio CRD schemas instead
(``../shared/schemas/`` or ``IAP_ISTIO_CRDS``). The ConfigMap's iap.yaml must pass iap's own config
validator.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from iap import config
from tests.deploy.istio_crds import load_schemas, schema_errors

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"

# The oldest Kubernetes minor the manifests are meant for, and a recent one.
KUBERNETES_VERSIONS = ("1.31", "1.35")

EXPECTED = {
    ("Namespace", "iap"),
    ("ServiceAccount", "iap"),
    ("ConfigMap", "iap-config"),
    ("Deployment", "iap"),
    ("Service", "iap"),
    ("Service", "iap-admin"),
    ("HorizontalPodAutoscaler", "iap"),
    ("PodDisruptionBudget", "iap"),
    ("NetworkPolicy", "iap"),
}
SECRETS = {"iap-signing-keys", "iap-session-keys", "iap-upstream-tls"}

Doc = dict[str, Any]


def manifest_files() -> list[Path]:
    return sorted(path for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")


def documents() -> Iterator[tuple[str, Doc]]:
    for path in manifest_files():
        for index, document in enumerate(yaml.safe_load_all(path.read_text(encoding="utf-8"))):
            if document is not None:
                yield f"{path.name}#{index}", document


def is_istio(document: Doc) -> bool:
    return str(document["apiVersion"]).split("/")[0].endswith("istio.io")


ALL = list(documents())
KUBERNETES = [(where, document) for where, document in ALL if not is_istio(document)]
ISTIO = [
    (f"istio/{path.name}#{index}", document)
    for path in sorted((K8S / "istio").glob("*.yaml"))
    if path.name != "kustomization.yaml"
    for index, document in enumerate(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    if document is not None
]


def only(kind: str, name: str) -> Doc:
    found = [d for _, d in ALL if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind}/{name}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def deployment() -> Doc:
    return only("Deployment", "iap")


@pytest.fixture(scope="module")
def pod(deployment: Doc) -> Doc:
    spec: Doc = deployment["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def pod_labels(deployment: Doc) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


@pytest.fixture(scope="module")
def container(pod: Doc) -> Doc:
    containers = pod["containers"]
    assert [c["name"] for c in containers] == ["iap"]
    assert "initContainers" not in pod
    first: Doc = containers[0]
    return first


@pytest.fixture(scope="module")
def iap_config() -> config.Config:
    text = only("ConfigMap", "iap-config")["data"]["iap.yaml"]
    return config.parse(yaml.safe_load(text))


def port_number(container: Doc, port: int | str) -> int:
    """A probe's or Service's target port, resolved through the container's named ports."""
    if isinstance(port, int):
        return port
    numbers = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    assert numbers, f"no container port named {port}"
    return int(numbers[0])


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


# ---------------------------------------------------------------- schema and inventory


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == [path.name for path in manifest_files()]


def test_resources_are_the_expected_set_in_namespace_iap() -> None:
    kubernetes = [(d["kind"], d["metadata"]["name"]) for _, d in KUBERNETES]
    assert sorted(kubernetes) == sorted(EXPECTED)
    for where, document in ALL:
        if document["kind"] != "Namespace":
            assert document["metadata"].get("namespace") == "iap", where


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(("where", "document"), KUBERNETES, ids=[w for w, _ in KUBERNETES])
def test_manifest_validates_strictly(version: str, where: str, document: Doc) -> None:
    try:
        validated = kubernetes_validate.validate(document, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(part) for part in exc.path)
        pytest.fail(
            f"{where} is not a valid {document['kind']} in {version}: {path}: {exc.message}"
        )
    except kubernetes_validate.SchemaNotFoundError as exc:
        pytest.fail(f"{where}: {exc.message}")
    assert validated == version


@pytest.mark.parametrize(("where", "document"), ISTIO, ids=[w for w, _ in ISTIO])
def test_istio_resource_validates_against_the_crds(where: str, document: Doc) -> None:
    assert is_istio(document), where
    assert schema_errors(load_schemas(), document) == [], where


def test_the_istio_component_has_resources() -> None:
    assert {document["kind"] for _, document in ISTIO} >= {"Gateway", "VirtualService"}


def test_strict_validation_rejects_a_misspelt_field(deployment: Doc) -> None:
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    security = broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    security["readOnlyRootFilesytem"] = security.pop("readOnlyRootFilesystem")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


# ---------------------------------------------------------------- Deployment


def test_deployment_runs_two_replicas_of_its_own_pods(
    deployment: Doc, pod_labels: dict[str, str]
) -> None:
    assert deployment["spec"]["replicas"] == 2
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)


def test_pod_runs_non_root_with_runtime_default_seccomp(pod: Doc) -> None:
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 10001
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["serviceAccountName"] == "iap"
    assert pod["automountServiceAccountToken"] is False
    for host_namespace in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(host_namespace), host_namespace


def test_container_is_locked_down(container: Doc) -> None:
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["runAsNonRoot"] is True
    assert security.get("runAsUser", 10001) == 10001
    assert security.get("privileged", False) is False
    assert security["capabilities"] == {"drop": ["ALL"]}


def test_probes_use_the_admin_port(container: Doc, iap_config: config.Config) -> None:
    admin_port = iap_config.admin.address.port
    expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        http = container[probe]["httpGet"]
        assert http["path"] == path, probe
        assert port_number(container, http["port"]) == admin_port, probe
        assert http.get("scheme", "HTTP") == "HTTP", probe


def test_listener_ports_match_the_config(container: Doc, iap_config: config.Config) -> None:
    assert port_number(container, "https") == iap_config.listen.address.port
    assert port_number(container, "admin") == iap_config.admin.address.port
    # The kubelet, Prometheus and istiod reach the admin listener on the pod IP.
    assert not ipaddress.ip_address(iap_config.admin.address.host).is_loopback


def test_resources_are_requested_and_limited(container: Doc) -> None:
    resources = container["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), kind


def test_replicas_spread_over_zones_and_nodes(pod: Doc, pod_labels: dict[str, str]) -> None:
    constraints = pod["topologySpreadConstraints"]
    keys = {c["topologyKey"] for c in constraints}
    assert {"topology.kubernetes.io/zone", "kubernetes.io/hostname"} <= keys
    for constraint in constraints:
        assert selects(constraint["labelSelector"]["matchLabels"], pod_labels)


def test_termination_leaves_time_to_drain(
    pod: Doc, container: Doc, iap_config: config.Config
) -> None:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    sleep = int(command[1])
    assert sleep > 0
    assert pod["terminationGracePeriodSeconds"] == 30
    assert sleep + iap_config.drain_timeout < pod["terminationGracePeriodSeconds"]


def test_volumes_config_tmp_and_optional_secrets(pod: Doc, container: Doc) -> None:
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}

    config_volume = volumes[mounts["/etc/iap"]["name"]]
    assert config_volume["configMap"]["name"] == "iap-config"
    assert mounts["/etc/iap"]["readOnly"] is True
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert container["args"] == ["run", "-c", "/etc/iap/iap.yaml"]

    secrets = {v["secret"]["secretName"]: v["secret"] for v in volumes.values() if "secret" in v}
    assert set(secrets) == SECRETS
    assert all(secret["optional"] is True for secret in secrets.values())
    mounted = {m["name"] for m in container["volumeMounts"]}
    assert set(volumes) == mounted
    for mount in container["volumeMounts"]:
        if "secret" in volumes[mount["name"]]:
            assert mount["readOnly"] is True


# ---------------------------------------------------------------- Services, HPA, PDB


def test_public_service_maps_443_to_the_listener(
    container: Doc, pod_labels: dict[str, str]
) -> None:
    service = only("Service", "iap")
    assert selects(service["spec"]["selector"], pod_labels)
    ports = service["spec"]["ports"]
    assert [(p["port"], port_number(container, p["targetPort"])) for p in ports] == [(443, 8443)]


def test_admin_service_is_cluster_internal(container: Doc, pod_labels: dict[str, str]) -> None:
    service = only("Service", "iap-admin")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert selects(service["spec"]["selector"], pod_labels)
    ports = service["spec"]["ports"]
    assert [(p["port"], port_number(container, p["targetPort"])) for p in ports] == [(9090, 9090)]


def test_hpa_scales_the_deployment_on_cpu() -> None:
    hpa = only("HorizontalPodAutoscaler", "iap")
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "iap"}
    assert 2 <= spec["minReplicas"] < spec["maxReplicas"]
    assert [m["resource"]["name"] for m in spec["metrics"] if m["type"] == "Resource"] == ["cpu"]


def test_pdb_keeps_one_replica(pod_labels: dict[str, str]) -> None:
    pdb = only("PodDisruptionBudget", "iap")
    assert pdb["spec"]["minAvailable"] == 1
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)


# ---------------------------------------------------------------- NetworkPolicy


def ports_of(rule: Doc) -> set[tuple[str, int]]:
    return {(p.get("protocol", "TCP"), p["port"]) for p in rule.get("ports", [])}


def test_network_policy_selects_iap_both_ways(pod_labels: dict[str, str]) -> None:
    policy = only("NetworkPolicy", "iap")["spec"]
    assert selects(policy["podSelector"]["matchLabels"], pod_labels)
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]


def test_network_policy_ingress() -> None:
    rules = only("NetworkPolicy", "iap")["spec"]["ingress"]
    public = [r for r in rules if ("TCP", 8443) in ports_of(r)]
    assert any("from" not in r for r in public), "8443 must be open to every source"
    admin = [r for r in rules if ("TCP", 9090) in ports_of(r)]
    assert admin
    for rule in admin:
        peers = rule["from"]
        assert peers, "9090 must never be open to every source"
        assert all(set(peer) == {"namespaceSelector"} for peer in peers)
    namespaces = [peer["namespaceSelector"]["matchLabels"] for r in admin for peer in r["from"]]
    assert {"kubernetes.io/metadata.name": "istio-system"} in namespaces
    # Every rule names its ports: nothing else on the pod is reachable.
    assert all(r.get("ports") for r in rules)
    assert {port for r in rules for _, port in ports_of(r)} == {8443, 9090}


def test_network_policy_egress() -> None:
    rules = only("NetworkPolicy", "iap")["spec"]["egress"]
    allowed = set().union(*(ports_of(r) for r in rules))
    assert {("UDP", 53), ("TCP", 53), ("TCP", 443), ("TCP", 6379)} <= allowed
    assert all(r.get("ports") for r in rules), "every egress rule names its ports"
    wide = [r for r in rules if any("ipBlock" in peer for peer in r.get("to", []))]
    assert wide
    for rule in wide:
        assert ports_of(rule) == {("TCP", 443)}, "the internet is reachable on 443 only"
    gateway = [
        r
        for r in rules
        for peer in r.get("to", [])
        if peer.get("namespaceSelector", {}).get("matchLabels")
        == {"kubernetes.io/metadata.name": "istio-system"}
    ]
    assert gateway


# ---------------------------------------------------------------- the embedded iap.yaml


def file_keys(node: object, path: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if str(key).endswith(("_file", "_dir")):
                yield where
            yield from file_keys(value, where)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from file_keys(item, f"{path}[{index}]")


def test_embedded_config_is_valid_and_needs_no_files(iap_config: config.Config) -> None:
    text = only("ConfigMap", "iap-config")["data"]["iap.yaml"]
    assert list(file_keys(yaml.safe_load(text))) == []
    assert str(iap_config.listen.address) == "0.0.0.0:8443"
    assert str(iap_config.admin.address) == "0.0.0.0:9090"
    assert iap_config.trusted_proxies
    assert all(net.prefixlen > 0 for net in iap_config.trusted_proxies)
    for route in iap_config.routes:
        assert route.upstream == "https://istio-ingressgateway.istio-system.svc:443"
        assert route.policy.public is True
