{{/*
Names and labels shared by every template.
*/}}

{{- define "gamecluster.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: release name + chart name, unless the release name already contains it.
Truncated to 63 characters (DNS label limit).
*/}}
{{- define "gamecluster.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "gamecluster.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gamecluster.labels" -}}
helm.sh/chart: {{ include "gamecluster.chart" . }}
{{ include "gamecluster.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gamecluster
{{- end }}

{{- define "gamecluster.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gamecluster.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gamecluster.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gamecluster.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The one image (operator, relay pods, helm test): tag defaults to the chart's appVersion.
*/}}
{{- define "gamecluster.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "gamecluster.jaegerName" -}}
{{- printf "%s-jaeger" (include "gamecluster.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Restricted Pod Security Standard, pod and container level; every pod of the chart uses them.
UID/GID 10001 is the image's own non-root user (see the Dockerfile).
*/}}
{{- define "gamecluster.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "gamecluster.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}
