{{/*
The operator's permissions. They mirror operator/gamecluster/rbac.py rule for rule (the
"why" of each is there); tests/chart/test_rbac.py fails when the two differ.
*/}}

{{/* Leader election: only in the operator's own namespace. */}}
{{- define "gamecluster.rbac.leaderRules" -}}
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, update]
{{- end }}

{{/* Needed in every namespace the operator watches. */}}
{{- define "gamecluster.rbac.namespacedRules" -}}
- apiGroups: [gamecluster.io]
  resources: [gameclusters]
  verbs: [get, list, watch, patch]
- apiGroups: [gamecluster.io]
  resources: [gameclusters/status]
  verbs: [get, patch, update]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [apps]
  resources: [deployments, statefulsets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services, configmaps]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, delete]
# The autoscaler lists relay pods (their load reports are keyed by pod name) and sets
# pod-deletion-cost on them before a scale-down, so the least-loaded pods go first.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, patch]
# No list/watch: the operator reads the one Secret a GameCluster names and applies the
# one it generates, and never needs to see the others.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create, patch, delete]
{{- end }}

{{/* Cluster-scoped reads kopf makes only when it watches every namespace. */}}
{{- define "gamecluster.rbac.clusterRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}

{{/* For people: aggregated into the built-in view / edit / admin ClusterRoles. */}}
{{- define "gamecluster.rbac.viewRules" -}}
- apiGroups: [gamecluster.io]
  resources: [gameclusters, gameclusters/status, gameclusters/scale]
  verbs: [get, list, watch]
{{- end }}

{{- define "gamecluster.rbac.editRules" -}}
- apiGroups: [gamecluster.io]
  resources: [gameclusters]
  verbs: [get, list, watch, create, update, patch, delete, deletecollection]
- apiGroups: [gamecluster.io]
  resources: [gameclusters/scale]
  verbs: [get, update, patch]
{{- end }}
