"""docker/k8s/: every manifest validates against the Kubernetes schemas (kubernetes-validate, offline)
or, for KEDA's resources, against the fields KEDA requires; and every command, variable, file,
label and name they use exists, as tests/test_docker_files.py checks for compose."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml
from test_docker_files import check_command, check_lvm_variable

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "docker" / "k8s"
K8S_VERSION = "1.30"
DOCS = [(path.name, doc) for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]
BY_KIND: dict[str, list[dict]] = {}
for _, _doc in DOCS:
    BY_KIND.setdefault(_doc["kind"], []).append(_doc)

# The parts of KEDA's v2 CRDs (keda.sh/v1alpha1) these manifests use; KEDA's CRDs are not in the
# Kubernetes schemas.
KEDA_SCHEMAS = {
    "ScaledObject": {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["scaleTargetRef", "triggers"],
                "additionalProperties": False,
                "properties": {
                    "scaleTargetRef": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {"name": {"type": "string"}},
                    },
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "pollingInterval": {"type": "integer"},
                    "cooldownPeriod": {"type": "integer"},
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["type", "metadata"],
                            "properties": {
                                "type": {"type": "string"},
                                "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                                "authenticationRef": {"type": "object", "required": ["name"]},
                            },
                        },
                    },
                },
            }
        },
    },
    "TriggerAuthentication": {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "secretTargetRef": {
                        "type": "array",
                        "items": {"type": "object", "required": ["parameter", "name", "key"]},
                    }
                },
            }
        },
    },
}


def containers() -> list[tuple[str, dict]]:
    return [
        (d["metadata"]["name"], c)
        for kind in ("Deployment", "Job")
        for d in BY_KIND.get(kind, [])
        for c in d["spec"]["template"]["spec"]["containers"]
    ]


@pytest.mark.parametrize("name,doc", DOCS, ids=[f"{n}:{d['kind']}/{d['metadata']['name']}" for n, d in DOCS])
def test_manifest_validates_against_its_schema(name, doc):
    if doc["apiVersion"].startswith("keda.sh/"):
        import jsonschema

        jsonschema.validate(doc, KEDA_SCHEMAS[doc["kind"]])
        return
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises ValidationError


def test_every_command_variable_and_file_exists():
    config = BY_KIND["ConfigMap"][0]["data"]
    for name in config:
        check_lvm_variable(name)
    secret = BY_KIND["Secret"][0]["stringData"]
    for name in secret:
        if name.startswith("LVM_"):
            check_lvm_variable(name)
    for _, c in containers():
        check_command(c["command"])
        for env in c.get("env", []):
            check_lvm_variable(env["name"])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            command = c.get(probe, {}).get("exec", {}).get("command")
            if command:
                assert command[:2] == ["sh", "-c"]
                check_command(shlex.split(command[2].replace('"$HOSTNAME"', "pod-name")))
        assert c["image"] in ("lvm-queue:cpu", "lvm-queue:cuda")  # the two builds docker/Dockerfile describes
    for model in ("lstm", "gru"):
        assert f"/data/artifacts/{model}.pt" == config[f"LVM_MODELS__{model.upper()}"]


def test_workers_drain_and_are_probed_by_their_own_health():
    drain = float(BY_KIND["ConfigMap"][0]["data"]["LVM_DRAIN_SECONDS"])
    workers = [d for d in BY_KIND["Deployment"] if d["metadata"]["name"].startswith("lvm-worker-")]
    assert {d["metadata"]["name"] for d in workers} == {
        "lvm-worker-lstm", "lvm-worker-lstm-gpu", "lvm-worker-gru", "lvm-worker-gru-gpu"
    }  # fmt: skip
    for d in workers:
        pod = d["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert pod["terminationGracePeriodSeconds"] > drain
        assert "kill -TERM 1" in c["lifecycle"]["preStop"]["exec"]["command"][2]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert 'lvmq health --worker "$HOSTNAME"' in c[probe]["exec"]["command"][2]
        gpu = d["metadata"]["name"].endswith("-gpu")
        assert ("nvidia.com/gpu" in c["resources"].get("limits", {})) == gpu
        assert {"name": "LVM_DEVICE", "value": "cuda" if gpu else "cpu"} in c["env"]
        assert c["command"][-1] == f"lvm-{d['metadata']['labels']['lvm/model']}"


def test_disruption_budgets_and_scalers_name_real_workers_and_queues():
    deployments = {d["metadata"]["name"]: d for d in BY_KIND["Deployment"]}
    for pdb in BY_KIND["PodDisruptionBudget"]:
        wanted = pdb["spec"]["selector"]["matchLabels"]
        matched = [
            n for n, d in deployments.items() if wanted.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert matched, f"PDB {pdb['metadata']['name']} selects no pods"
    auth_names = {a["metadata"]["name"] for a in BY_KIND["TriggerAuthentication"]}
    secret = BY_KIND["Secret"][0]
    for scaled in BY_KIND["ScaledObject"]:
        target = deployments[scaled["spec"]["scaleTargetRef"]["name"]]
        queue = target["spec"]["template"]["spec"]["containers"][0]["command"][-1]
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["type"] == "redis" and trigger["metadata"]["listName"] == f"rq:queue:{queue}"
        assert trigger["metadata"]["addressFromEnv"] in secret["stringData"]
        assert trigger["authenticationRef"]["name"] in auth_names
        assert 1 <= scaled["spec"]["minReplicaCount"] < scaled["spec"]["maxReplicaCount"]
    for auth in BY_KIND["TriggerAuthentication"]:
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]


def test_volumes_and_services_refer_to_what_exists():
    claims = {p["metadata"]["name"] for p in BY_KIND["PersistentVolumeClaim"]}
    for kind in ("Deployment", "Job"):
        for d in BY_KIND[kind]:
            for volume in d["spec"]["template"]["spec"].get("volumes", []):
                assert volume["persistentVolumeClaim"]["claimName"] in claims
    gateway = next(d for d in BY_KIND["Deployment"] if d["metadata"]["name"] == "lvm-gateway")
    (service,) = BY_KIND["Service"]
    assert service["spec"]["selector"].items() <= gateway["spec"]["template"]["metadata"]["labels"].items()
    (c,) = gateway["spec"]["template"]["spec"]["containers"]
    assert {c["readinessProbe"]["httpGet"]["path"], c["livenessProbe"]["httpGet"]["path"]} == {"/readyz", "/healthz"}
