{{- define "vmreg.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vmreg.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
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
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* shutdownTimeout ("30", "30s" or "2m") in seconds. */}}
{{- define "vmreg.shutdownSeconds" -}}
{{- $t := toString .Values.shutdownTimeout -}}
{{- if hasSuffix "m" $t -}}
{{- mul (trimSuffix "m" $t | int) 60 -}}
{{- else -}}
{{- trimSuffix "s" $t | int -}}
{{- end -}}
{{- end -}}

{{- define "vmreg.secretName" -}}
{{- printf "%s-env" (include "vmreg.fullname" .) -}}
{{- end -}}
