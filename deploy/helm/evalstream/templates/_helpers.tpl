{{/* The chart's name. */}}
{{- define "evalstream.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's objects' name: the release name, with the chart's name unless it holds it. */}}
{{- define "evalstream.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "evalstream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "evalstream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "evalstream.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "evalstream.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "evalstream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "evalstream.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The configuration file: .Values.config with the addresses the worker listens on set from
.Values.ports, so the probes, the Service and the configuration agree.
*/}}
{{- define "evalstream.config" -}}
{{- $config := deepCopy .Values.config }}
{{- $telemetry := get $config "telemetry" | default dict }}
{{- $metrics := get $telemetry "metrics" | default dict }}
{{- $_ := set $metrics "listen" (printf "0.0.0.0:%d" (int .Values.ports.metrics)) }}
{{- $_ := set $telemetry "metrics" $metrics }}
{{- $_ := set $config "telemetry" $telemetry }}
{{- $receivers := get $config "receivers" | default dict }}
{{- with get $receivers "otlp" }}
{{- $protocols := get . "protocols" | default (dict "grpc" dict "http" dict) }}
{{- if hasKey $protocols "grpc" }}
{{- $grpc := get $protocols "grpc" | default dict }}
{{- $_ := set $grpc "endpoint" (printf "0.0.0.0:%d" (int $.Values.ports.otlpGrpc)) }}
{{- $_ := set $protocols "grpc" $grpc }}
{{- end }}
{{- if hasKey $protocols "http" }}
{{- $http := get $protocols "http" | default dict }}
{{- $_ := set $http "endpoint" (printf "0.0.0.0:%d" (int $.Values.ports.otlpHttp)) }}
{{- $_ := set $protocols "http" $http }}
{{- end }}
{{- $_ := set . "protocols" $protocols }}
{{- end }}
{{- with get $config "guard" }}
{{- if hasKey . "grpc" }}
{{- $_ := set . "grpc" (dict "endpoint" (printf "0.0.0.0:%d" (int $.Values.ports.guardGrpc))) }}
{{- end }}
{{- if hasKey . "http" }}
{{- $_ := set . "http" (dict "endpoint" (printf "0.0.0.0:%d" (int $.Values.ports.guardHttp))) }}
{{- end }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* Whether the configuration serves the guard API, and on which protocols. */}}
{{- define "evalstream.guard" -}}
{{- with get .Values.config "guard" }}
{{- if hasKey . "grpc" }}grpc {{ end }}
{{- if hasKey . "http" }}http{{ end }}
{{- end }}
{{- end }}

{{/* Whether the configuration has an OTLP receiver, and which of its protocols. */}}
{{- define "evalstream.otlp" -}}
{{- $otlp := get (get .Values.config "receivers" | default dict) "otlp" }}
{{- if $otlp }}
{{- $protocols := get $otlp "protocols" | default (dict "grpc" dict "http" dict) }}
{{- if hasKey $protocols "grpc" }}grpc {{ end }}
{{- if hasKey $protocols "http" }}http{{ end }}
{{- end }}
{{- end }}

{{/* receivers.kafka.drain_timeout_seconds (30 when not set), whole seconds rounded up. */}}
{{- define "evalstream.drainSeconds" -}}
{{- $kafka := get (get .Values.config "receivers" | default dict) "kafka" | default dict }}
{{- $drain := get $kafka "drain_timeout_seconds" | default 30 }}
{{- ceil (float64 $drain) | int }}
{{- end }}
