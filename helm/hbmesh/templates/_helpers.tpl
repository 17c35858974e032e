{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "hbmesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-scoped name: <release>-hbmesh unless the release already says hbmesh. */}}
{{- define "hbmesh.fullname" -}}
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

{{/* Name of one component's objects: <fullname>-<component>. Args: (dict "root" $ "component" "ingest") */}}
{{- define "hbmesh.componentName" -}}
{{- printf "%s-%s" (include "hbmesh.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "hbmesh.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "hbmesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hbmesh
{{- end -}}

{{/* Labels of one component. Args: (dict "root" $ "component" "ingest") */}}
{{- define "hbmesh.componentLabels" -}}
{{ include "hbmesh.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Immutable selector of one component. Args: (dict "root" $ "component" "ingest") */}}
{{- define "hbmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hbmesh.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "hbmesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "hbmesh.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Image reference of a component. Args: (dict "root" $ "values" .Values.ingest) */}}
{{- define "hbmesh.image" -}}
{{- $img := .root.Values.image -}}
{{- if $img.digest -}}
{{- printf "%s/%s@%s" $img.registry .values.image.repository $img.digest -}}
{{- else -}}
{{- printf "%s/%s:%s" $img.registry .values.image.repository (default .root.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{/* The existing Secret every secret setting comes from. */}}
{{- define "hbmesh.secretName" -}}
{{- required "secrets.existingSecret is required: the chart never inlines secret values" .Values.secrets.existingSecret -}}
{{- end -}}

{{/* Secret-backed env vars: only ever secretKeyRef. Args: (dict "root" $ "auth" true "yugabyte" true) */}}
{{- define "hbmesh.secretEnv" -}}
{{- $secret := include "hbmesh.secretName" .root -}}
{{- if .auth }}
- name: HB_AUTH_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .root.Values.secrets.authSecretKey }}
{{- end }}
{{- if .yugabyte }}
- name: HB_YUGABYTE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .root.Values.secrets.yugabyteUrlKey }}
{{- end }}
{{- end -}}

{{/* Non-secret HB_* settings of a component, as ConfigMap data. Args: (dict "root" $ "component" "ingest") */}}
{{- define "hbmesh.configData" -}}
{{- $v := .root.Values -}}
HB_LOG_FORMAT: {{ $v.log.format | quote }}
HB_LOG: {{ $v.log.filter | quote }}
{{- if $v.tls.enabled }}
HB_TLS_CERT: "/etc/hbmesh/tls/tls.crt"
HB_TLS_KEY: "/etc/hbmesh/tls/tls.key"
{{- end }}
{{- if eq .component "ingest" }}
HB_INGEST_ADDR: {{ printf "0.0.0.0:%v" $v.ingest.ports.grpc | quote }}
HB_INGEST_METRICS_ADDR: {{ printf "0.0.0.0:%v" $v.ingest.ports.metrics | quote }}
HB_KAFKA_BROKERS: {{ $v.kafka.brokers | quote }}
HB_KAFKA_TOPIC: {{ $v.kafka.topic | quote }}
HB_DLQ_TOPIC: {{ $v.kafka.dlqTopic | quote }}
HB_DEVICE_RATE: {{ $v.ingest.config.deviceRate | quote }}
HB_DEVICE_BURST: {{ $v.ingest.config.deviceBurst | quote }}
HB_MAX_EVENT_AGE: {{ $v.ingest.config.maxEventAge | quote }}
HB_INGEST_CONCURRENCY: {{ $v.ingest.config.concurrency | quote }}
{{- else if eq .component "stream" }}
HB_STREAM_METRICS_ADDR: {{ printf "0.0.0.0:%v" $v.stream.ports.metrics | quote }}
HB_KAFKA_BROKERS: {{ $v.kafka.brokers | quote }}
HB_KAFKA_TOPIC: {{ $v.kafka.topic | quote }}
HB_KAFKA_GROUP: {{ $v.kafka.consumerGroup | quote }}
HB_SCYLLA_NODES: {{ $v.scylla.nodes | quote }}
HB_SESSION_GAP: {{ $v.stream.config.sessionGap | quote }}
HB_ALLOWED_LATENESS: {{ $v.stream.config.allowedLateness | quote }}
HB_IDLE_TIMEOUT: {{ $v.stream.config.idleTimeout | quote }}
HB_RAW_TTL: {{ $v.stream.config.rawTtl | quote }}
HB_FLUSH_INTERVAL: {{ $v.stream.config.flushInterval | quote }}
HB_FLUSH_MAX: {{ $v.stream.config.flushMax | quote }}
HB_SESSION_WRITE_INTERVAL: {{ $v.stream.config.sessionWriteInterval | quote }}
HB_STREAM_STALL_TIMEOUT: {{ $v.stream.config.stallTimeout | quote }}
{{- else if eq .component "query" }}
HB_QUERY_HTTP_ADDR: {{ printf "0.0.0.0:%v" $v.query.ports.http | quote }}
HB_QUERY_GRPC_ADDR: {{ printf "0.0.0.0:%v" $v.query.ports.grpc | quote }}
HB_QUERY_METRICS_ADDR: {{ printf "0.0.0.0:%v" $v.query.ports.metrics | quote }}
HB_TRINO_URL: {{ $v.trino.url | quote }}
HB_TRINO_CATALOG_YUGABYTE: {{ $v.trino.catalogYugabyte | quote }}
HB_TRINO_CATALOG_SCYLLA: {{ $v.trino.catalogScylla | quote }}
HB_QUERY_TIMEOUT: {{ $v.query.config.queryTimeout | quote }}
{{- end }}
{{- end -}}

{{/* Pod annotations shared by every workload: Linkerd injection when on. */}}
{{- define "hbmesh.meshAnnotations" -}}
{{- if .Values.mesh.linkerd.enabled }}
linkerd.io/inject: enabled
{{- with .Values.mesh.linkerd.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Volumes every pod gets: a writable /tmp (the root filesystem is read-only) and TLS material. */}}
{{- define "hbmesh.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ required "tls.existingSecret is required when tls.enabled" .Values.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "hbmesh.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/hbmesh/tls
  readOnly: true
{{- end }}
{{- end -}}
