{{- define "vmreg.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vmreg.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "vmreg.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "vmreg.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "vmreg.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vmreg.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The helm test pod's labels: none of the selectors of the Deployment, Service, PDB,
NetworkPolicy or topology spread match them, so no traffic and no budget counts it. */}}
{{- define "vmreg.testSelectorLabels" -}}
app.kubernetes.io/name: {{ include "vmreg.name" . }}-test
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "vmreg.testLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "vmreg.testSelectorLabels" . }}
app.kubernetes.io/component: test
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The fewest replicas the Deployment runs: the HPA's floor when it scales. */}}
{{- define "vmreg.minReplicas" -}}
{{- if .Values.autoscaling.enabled -}}
{{- .Values.autoscaling.minReplicas | int -}}
{{- else -}}
{{- .Values.replicaCount | int -}}
{{- end -}}
{{- end -}}

{{- define "vmreg.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "vmreg.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "vmreg.image" -}}
{{- if not .Values.image.repository -}}
{{- fail "image.repository is required: no public vmreg image exists; build deploy/Dockerfile, push it to a registry the cluster pulls from, and set image.repository (and image.tag)" -}}
{{- end -}}
{{- $ref := printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- with .Values.image.digest -}}
{{- /* A digest pins the bytes; the tag stays for people reading the pod spec. */ -}}
{{- $ref = printf "%s@%s" $ref . -}}
{{- end -}}
{{- $ref -}}
{{- end -}}

{{/* shutdownTimeout ("30", "30s", "10m" or "1h") in seconds. */}}
{{- define "vmreg.shutdownSeconds" -}}
{{- $t := toString .Values.shutdownTimeout -}}
{{- if hasSuffix "h" $t -}}
{{- mul (trimSuffix "h" $t | int) 3600 -}}
{{- else if hasSuffix "m" $t -}}
{{- mul (trimSuffix "m" $t | int) 60 -}}
{{- else -}}
{{- trimSuffix "s" $t | int -}}
{{- end -}}
{{- end -}}

{{- define "vmreg.secretName" -}}
{{- printf "%s-env" (include "vmreg.fullname" .) -}}
{{- end -}}
