{{/* The image reference: repository and tag (the chart's appVersion unless set). */}}
{{- define "suc.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Two controllers without leader election would both roll out every Plan. */}}
{{- define "suc.checkValues" -}}
{{- if and (not .Values.leaderElection) (gt (int .Values.replicas) 1) -}}
{{- fail "leaderElection: false runs a controller in every replica: set replicas: 1 or leaderElection: true" -}}
{{- end -}}
{{- end -}}

{{/* The labels of every object: Kubernetes' recommended ones and Helm's. deploy/ carries
     app.kubernetes.io/name alone (a test compares the two without the others). */}}
{{- define "suc.labels" -}}
app.kubernetes.io/name: system-upgrade-controller
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}
