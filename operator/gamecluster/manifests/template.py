"""``spec.template`` overlays: the user's pod template fields merged onto a generated one.

Agones embeds a full PodTemplateSpec and Strimzi has ``template``; ours is the shaping half of
one: metadata labels/annotations, scheduling (nodeSelector, tolerations, affinity, spread
constraints, priority class), imagePullSecrets, the ServiceAccount, and resources per
container. Everything that keeps the pods working and safe stays the operator's and wins:

- the selector and identity labels and the config-hash annotation (a user label of the same
  key is dropped, so the Deployment selector always matches its pods);
- container name, image, command, ports, probes, env, security contexts, volumes;
- ``automountServiceAccountToken: false``: a named ServiceAccount is for image pull secrets
  and workload identity annotations, not API access (relay and Redis never call the API).

The merge is pure and returns a new dict; the generated template is not modified.
"""

import copy
from typing import Any

from gamecluster.spec import PodTemplate


def overlay(template: dict[str, Any], user: PodTemplate) -> dict[str, Any]:
    """The generated pod ``template`` with ``user``'s fields merged in (operator's win)."""
    merged = copy.deepcopy(template)
    meta = merged.setdefault("metadata", {})
    if user.metadata.labels:
        meta["labels"] = {**user.metadata.labels, **meta.get("labels", {})}
    if user.metadata.annotations:
        meta["annotations"] = {**user.metadata.annotations, **meta.get("annotations", {})}

    pod = merged["spec"]
    wanted = user.spec
    if wanted.image_pull_secrets:
        pod["imagePullSecrets"] = [dict(ref) for ref in wanted.image_pull_secrets]
    if wanted.node_selector:
        pod["nodeSelector"] = dict(wanted.node_selector)
    if wanted.tolerations:
        pod["tolerations"] = copy.deepcopy(list(wanted.tolerations))
    if wanted.affinity:
        pod["affinity"] = copy.deepcopy(wanted.affinity)
    if wanted.topology_spread_constraints:
        pod["topologySpreadConstraints"] = copy.deepcopy(list(wanted.topology_spread_constraints))
    if wanted.priority_class_name:
        pod["priorityClassName"] = wanted.priority_class_name
    if wanted.service_account_name:
        pod["serviceAccountName"] = wanted.service_account_name
    pod["automountServiceAccountToken"] = False
    by_name = {container["name"]: container for container in pod.get("containers", [])}
    for container_overlay in wanted.containers:
        container = by_name.get(container_overlay.name)
        if container is not None and container_overlay.resources is not None:
            container["resources"] = container_overlay.resources.model_dump()
    return merged
