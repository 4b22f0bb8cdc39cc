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
