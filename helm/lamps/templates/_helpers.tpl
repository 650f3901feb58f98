{{/*
Names. Every object's name comes from these helpers, so none exceeds Kubernetes' limits.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "lamps.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release-wide name, at most 63 characters: fullnameOverride, or release-chart. */}}
{{- define "lamps.fullname" -}}
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

{{/*
A component's name: fullname cut so that "<fullname>-<component>" stays within 52 characters,
the suffix kept whole so two components never collide. 52, not 63: a StatefulSet's pods carry
a controller-revision-hash label of "<name>-<10 characters>", which must fit in 63.
Call with (dict "root" $ "component" "scheduler").
*/}}
{{- define "lamps.componentName" -}}
{{- $budget := sub 51 (len .component) | int }}
{{- printf "%s-%s" (include "lamps.fullname" .root | trunc $budget | trimSuffix "-") .component }}
{{- end }}

{{- define "lamps.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object of a component. Call with (dict "root" $ "component" "worker"). */}}
{{- define "lamps.labels" -}}
helm.sh/chart: {{ include "lamps.chart" .root }}
{{ include "lamps.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: lamps
{{- end }}

{{/* The labels that select a component's pods (Services, PDBs, NetworkPolicies). */}}
{{- define "lamps.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lamps.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* A component's image: (dict "root" $ "image" .Values.worker.image). */}}
{{- define "lamps.image" -}}
{{- $registry := .root.Values.image.registry }}
{{- $tag := printf "%s%s" (default .root.Chart.AppVersion .image.tag) (default "" .image.tagSuffix) }}
{{- if $registry }}
{{- printf "%s/%s:%s" $registry .image.repository $tag }}
{{- else }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{/* The Secret holding the bearer tokens (keys client-tokens, cluster-tokens, internal-token). */}}
{{- define "lamps.authSecretName" -}}
{{- default (include "lamps.componentName" (dict "root" . "component" "auth")) .Values.auth.existingSecret }}
{{- end }}

{{/* The Secret holding the bundled Redis's password (key password). */}}
{{- define "lamps.redisSecretName" -}}
{{- default (include "lamps.componentName" (dict "root" . "component" "redis-auth")) .Values.redis.auth.existingSecret }}
{{- end }}

{{/* The bundled Redis's Service name. */}}
{{- define "lamps.redisHost" -}}
{{- include "lamps.componentName" (dict "root" . "component" "redis") }}
{{- end }}

{{/*
Environment variables giving LAMPS_REDIS_URL: from the external Secret, or built from the
bundled Redis's Service and password (Kubernetes expands $(LAMPS_REDIS_PASSWORD) in place).
*/}}
{{- define "lamps.redisEnv" -}}
{{- if .Values.redis.external.url }}
- name: LAMPS_REDIS_URL
  value: {{ .Values.redis.external.url | quote }}
{{- else if .Values.redis.external.existingSecret }}
- name: LAMPS_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.existingSecret }}
      key: {{ .Values.redis.external.existingSecretKey }}
{{- else if .Values.redis.enabled }}
{{- if .Values.redis.auth.enabled }}
- name: LAMPS_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "lamps.redisSecretName" . }}
      key: password
- name: LAMPS_REDIS_URL
  value: "redis://:$(LAMPS_REDIS_PASSWORD)@{{ include "lamps.redisHost" . }}:{{ .Values.redis.port }}/{{ .Values.redis.database }}"
{{- else }}
- name: LAMPS_REDIS_URL
  value: "redis://{{ include "lamps.redisHost" . }}:{{ .Values.redis.port }}/{{ .Values.redis.database }}"
{{- end }}
{{- end }}
{{- end }}

{{/* Whether a Redis is configured at all ("true" or ""). */}}
{{- define "lamps.redisConfigured" -}}
{{- if or .Values.redis.enabled .Values.redis.external.url .Values.redis.external.existingSecret }}true{{ end }}
{{- end }}

{{/*
What every service container shares: command, ports, common settings as LAMPS_* variables.
Call with (dict "root" $ "service" "scheduler" "values" .Values.scheduler).
*/}}
{{- define "lamps.serverEnv" -}}
- name: LAMPS_PORT
  value: {{ .values.port | quote }}
- name: LAMPS_METRICS_PORT
  value: {{ .values.metricsPort | quote }}
- name: LAMPS_LOG_LEVEL
  value: {{ .root.Values.logging.level | quote }}
- name: LAMPS_LOG_FORMAT
  value: {{ .root.Values.logging.format | quote }}
- name: LAMPS_GRACE_SECONDS
  value: {{ .values.graceSeconds | quote }}
- name: LAMPS_DRAIN_DELAY_SECONDS
  value: {{ .values.drainDelaySeconds | quote }}
{{- end }}

{{/* Ports, probes and security context of a service container; same call as lamps.serverEnv. */}}
{{- define "lamps.serverContainer" -}}
imagePullPolicy: {{ .root.Values.image.pullPolicy }}
ports:
  - name: grpc
    containerPort: {{ .values.port }}
    protocol: TCP
  - name: metrics
    containerPort: {{ .values.metricsPort }}
    protocol: TCP
startupProbe:
  grpc:
    port: {{ .values.port }}
  periodSeconds: 2
  failureThreshold: {{ .values.startupFailureThreshold | default 60 }}
readinessProbe:
  grpc:
    port: {{ .values.port }}
    {{- with .readinessService }}
    # Ready means serving this service: a standby scheduler is alive but not ready.
    service: {{ . }}
    {{- end }}
  periodSeconds: 5
  failureThreshold: 2
livenessProbe:
  grpc:
    port: {{ .values.port }}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 6
securityContext:
  {{- toYaml .root.Values.securityContext | nindent 2 }}
resources:
  {{- toYaml .values.resources | nindent 2 }}
{{- end }}

{{/* Pod-level settings every component shares. Call with (dict "root" $ "values" .Values.x). */}}
{{- define "lamps.podSettings" -}}
{{- with .root.Values.image.pullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* A Secret value kept across upgrades: the live object's, else a fresh random one. */}}
{{- define "lamps.keptSecret" -}}
{{- $existing := lookup "v1" "Secret" .namespace .name }}
{{- if and $existing (hasKey $existing.data .key) }}
{{- index $existing.data .key }}
{{- else }}
{{- randAlphaNum 32 | b64enc }}
{{- end }}
{{- end }}

{{/*
A component's Service, gRPC and metrics ports.
Call with (dict "root" $ "component" "predictor" "values" .Values.predictor).
*/}}
{{- define "lamps.service" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "lamps.componentName" . }}
  labels:
    {{- include "lamps.labels" . | nindent 4 }}
  {{- with .values.service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ .values.service.type }}
  selector:
    {{- include "lamps.selectorLabels" . | nindent 4 }}
  ports:
    - name: grpc
      port: {{ .values.port }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
    - name: metrics
      port: {{ .values.metricsPort }}
      targetPort: metrics
      protocol: TCP
{{- end }}

{{/* A HorizontalPodAutoscaler on CPU for a Deployment; same call as lamps.service. */}}
{{- define "lamps.cpuAutoscaler" -}}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "lamps.componentName" . }}
  labels:
    {{- include "lamps.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "lamps.componentName" . }}
  minReplicas: {{ .values.autoscaling.minReplicas }}
  maxReplicas: {{ .values.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ .values.autoscaling.targetCPUUtilizationPercentage }}
{{- end }}

{{/* A ServiceMonitor scraping a component's metrics port; same call as lamps.service. */}}
{{- define "lamps.serviceMonitor" -}}
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "lamps.componentName" . }}
  labels:
    {{- include "lamps.labels" . | nindent 4 }}
    {{- with .root.Values.metrics.serviceMonitor.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "lamps.selectorLabels" . | nindent 6 }}
  endpoints:
    - port: metrics
      path: /metrics
      interval: {{ .root.Values.metrics.serviceMonitor.interval }}
      scrapeTimeout: {{ .root.Values.metrics.serviceMonitor.scrapeTimeout }}
{{- end }}

{{/*
A NetworkPolicy letting only the named components reach a component's gRPC port (or the given
port), while the metrics port stays open to the cluster's Prometheus.
Call with (dict "root" $ "component" "worker" "port" 50052 "metricsPort" 9402 "from" (list "scheduler")).
*/}}
{{- define "lamps.networkPolicy" -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "lamps.componentName" . }}
  labels:
    {{- include "lamps.labels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "lamps.selectorLabels" . | nindent 6 }}
  policyTypes: [Ingress]
  ingress:
    - from:
        {{- range .from }}
        - podSelector:
            matchLabels:
              {{- include "lamps.selectorLabels" (dict "root" $.root "component" .) | nindent 14 }}
        {{- end }}
      ports:
        - port: {{ .port }}
          protocol: TCP
    {{- if .metricsPort }}
    - ports:
        - port: {{ .metricsPort }}
          protocol: TCP
      {{- with .root.Values.networkPolicy.metricsFrom }}
      from:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    {{- end }}
{{- end }}
