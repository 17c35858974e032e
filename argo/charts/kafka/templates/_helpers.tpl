{{/* A config value as Kafka expects it: whole numbers without exponent (values reach templates as float64). */}}
{{- define "hbmesh-kafka.scalar" -}}
{{- if and (kindIs "float64" .) (eq (float64 (int64 .)) .) -}}
{{- int64 . -}}
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}
