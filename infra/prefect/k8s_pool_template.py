"""Make the onegen Kubernetes work pool's base job template from Prefect's default one:

    prefect work-pool get-default-base-job-template --type kubernetes > /tmp/default.json
    python infra/prefect/k8s_pool_template.py /tmp/default.json > /tmp/onegen-k8s.json
    prefect work-pool create onegen-k8s --type kubernetes --base-job-template /tmp/onegen-k8s.json

It adds three job variables used by infra/prefect/prefect-k8s.yaml:
- `secret_name`: a Kubernetes Secret whose keys become the flow pod's environment (envFrom), e.g.
  OPENAI_API_KEY, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_PASSWORD, RAY_ADDRESS. The values
  live only in the Secret: never in Prefect's database, deployment parameters or job variables.
- `shared_data_claim`: a PersistentVolumeClaim with the datasets, mounted at /opt/onegen/work/shared so the
  clone's ../shared/data paths resolve.
- `dvc_cache_claim`: a PersistentVolumeClaim for the DVC cache (/opt/onegen/dvc-cache).
"""
from __future__ import annotations

import json
import sys

EXTRA_VARIABLES = {
    "secret_name": {"title": "Secret name", "type": "string", "default": "onegen-secrets",
                    "description": "Kubernetes Secret exposed to the flow pod as environment variables"},
    "shared_data_claim": {"title": "Shared data PVC", "type": "string", "default": "onegen-shared-data",
                          "description": "PVC mounted at /opt/onegen/work/shared (params.yaml reads ../shared/data)"},
    "dvc_cache_claim": {"title": "DVC cache PVC", "type": "string", "default": "onegen-dvc-cache",
                        "description": "PVC mounted at /opt/onegen/dvc-cache"},
}


def patch(template: dict) -> dict:
    manifest = template["job_configuration"]["job_manifest"]
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    container["envFrom"] = [{"secretRef": {"name": "{{ secret_name }}"}}]
    container["volumeMounts"] = [*container.get("volumeMounts", []),
                                 {"name": "shared-data", "mountPath": "/opt/onegen/work/shared", "readOnly": True},
                                 {"name": "dvc-cache", "mountPath": "/opt/onegen/dvc-cache"}]
    pod["volumes"] = [*pod.get("volumes", []),
                      {"name": "shared-data", "persistentVolumeClaim": {"claimName": "{{ shared_data_claim }}"}},
                      {"name": "dvc-cache", "persistentVolumeClaim": {"claimName": "{{ dvc_cache_claim }}"}}]
    template["variables"].setdefault("properties", {}).update(EXTRA_VARIABLES)
    return template


if __name__ == "__main__":
    src = open(sys.argv[1]) if len(sys.argv) > 1 else sys.stdin
    json.dump(patch(json.load(src)), sys.stdout, indent=2)
    print()
