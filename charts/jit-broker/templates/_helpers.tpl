{{/* Names and labels. */}}
{{- define "jit-broker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "jit-broker.fullname" -}}
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

{{- define "jit-broker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "jit-broker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "jit-broker.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "jit-broker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: jit-broker
{{- end }}

{{- define "jit-broker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "jit-broker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "jit-broker.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end }}

{{/* The names of chart-rendered objects that other templates refer to. */}}
{{- define "jit-broker.configMapName" -}}{{ include "jit-broker.fullname" . }}-config{{- end }}
{{- define "jit-broker.devSecretName" -}}{{ include "jit-broker.fullname" . }}-dev-secrets{{- end }}
{{- define "jit-broker.policiesConfigMapName" -}}
{{- default (printf "%s-policies" (include "jit-broker.fullname" .)) .Values.policies.existingConfigMap -}}
{{- end }}

{{/* A name usable as a file or directory name: anything but [A-Za-z0-9._-] becomes "_". */}}
{{- define "jit-broker.pathName" -}}
{{- regexReplaceAll "[^A-Za-z0-9._-]" . "_" -}}
{{- end }}

{{/* Where things are mounted in the container. The config file points at these paths. */}}
{{- define "jit-broker.paths" -}}
config: /etc/jit/config.yaml
policies: /etc/jit/policies
audit: /etc/jit/secrets/audit
metrics: /etc/jit/secrets/metrics
slack: /etc/jit/secrets/slack
ssf: /etc/jit/secrets/ssf
clients: /etc/jit/secrets/clients
webhooks: /etc/jit/secrets/webhooks
ssfReceivers: /etc/jit/secrets/ssf-receivers
issuers: /etc/jit/issuers
auditFile: /var/lib/jit/audit
tmp: /tmp
{{- end }}

{{/*
The Secret (name and keys) behind each fixed secret, or the chart's dev Secret when devSecrets
is on and none is named. Returns YAML: {name, ...keys} or {} when there is none.
*/}}
{{- define "jit-broker.auditSecret" -}}
{{- $s := .Values.secrets.audit -}}
{{- if $s.existingSecret -}}
{{- toYaml (dict "name" $s.existingSecret "signingKey" $s.signingKeyKey "hmacKey" $s.hmacKeyKey) -}}
{{- else if .Values.devSecrets.enabled -}}
{{- toYaml (dict "name" (include "jit-broker.devSecretName" .) "signingKey" "audit-signing.pem" "hmacKey" "audit-hmac") -}}
{{- end -}}
{{- end }}

{{- define "jit-broker.metricsSecret" -}}
{{- $s := .Values.secrets.metrics -}}
{{- if $s.existingSecret -}}
{{- toYaml (dict "name" $s.existingSecret "key" $s.key) -}}
{{- else if .Values.devSecrets.enabled -}}
{{- toYaml (dict "name" (include "jit-broker.devSecretName" .) "key" "metrics-token") -}}
{{- end -}}
{{- end }}

{{/*
The Redis URL. Without a password for the config file; with "withPassword" the password is the
Kubernetes $(JIT_REDIS_PASSWORD) reference that the kubelet expands in JIT_REDIS_URL.
*/}}
{{- define "jit-broker.redisURL" -}}
{{- $r := .ctx.Values.redis -}}
{{- $scheme := ternary "rediss" "redis" $r.tls.enabled -}}
{{- $userinfo := "" -}}
{{- if .withPassword }}
{{- $userinfo = printf "%s:$(JIT_REDIS_PASSWORD)@" $r.auth.username -}}
{{- else if $r.auth.username }}
{{- $userinfo = printf "%s@" $r.auth.username -}}
{{- end -}}
{{- $query := "" -}}
{{- if and $r.tls.enabled $r.tls.caFile }}{{ $query = printf "?ssl_ca_certs=%s" $r.tls.caFile }}{{ end -}}
{{- printf "%s://%s%s:%d/%d%s" $scheme $userinfo $r.standalone.host (int $r.standalone.port) (int $r.standalone.db) $query -}}
{{- end }}

{{/*
Checks that the schema cannot express. Each failure names the value to set.
*/}}
{{- define "jit-broker.validate" -}}
{{- $v := .Values -}}
{{- if ne $v.redis.mode "standalone" -}}
{{- fail (printf "redis.mode=%s is not supported by this broker version yet: the broker connects to one Redis URL (standalone). Use redis.mode=standalone." $v.redis.mode) -}}
{{- end -}}
{{- if not $v.config.public_url -}}
{{- fail "config.public_url is required: the URL workloads use to reach the broker (the `iss` of its tokens)" -}}
{{- end -}}
{{- if not $v.redis.standalone.host -}}
{{- fail "redis.standalone.host is required: the chart does not run Redis (docs/deploy.md, Redis)" -}}
{{- end -}}
{{- if not (include "jit-broker.auditSecret" .) -}}
{{- fail "secrets.audit.existingSecret is required: a Secret with the audit checkpoint signing key (jit audit keygen) and the audit HMAC key (docs/deploy.md, Secrets)" -}}
{{- end -}}
{{- if and (not $v.policies.existingConfigMap) (not $v.policies.files) -}}
{{- fail "policies.files or policies.existingConfigMap is required: the broker does not start without a policy (docs/policy.md)" -}}
{{- end -}}
{{- if and $v.policies.existingConfigMap $v.policies.files -}}
{{- fail "set policies.files or policies.existingConfigMap, not both" -}}
{{- end -}}
{{- range $name, $issuer := $v.config.issuers -}}
{{- if and (eq $issuer.type "jwt") (not (index $v.secrets.issuers $name)) -}}
{{- fail (printf "secrets.issuers.%s.existingSecret is required: the signing keys of jwt issuer %q (jit keys rotate --dir ...; docs/deploy.md, Secrets)" $name $name) -}}
{{- end -}}
{{- end -}}
{{- range $name, $_ := $v.secrets.issuers -}}
{{- if not (hasKey $v.config.issuers $name) -}}
{{- fail (printf "secrets.issuers.%s names no issuer in config.issuers" $name) -}}
{{- end -}}
{{- end -}}
{{- $clientIds := list -}}
{{- range $v.config.clients -}}
{{- $clientIds = append $clientIds .client_id -}}
{{- if not (index $v.secrets.clients .client_id) -}}
{{- fail (printf "secrets.clients.%s is required: the secret of OAuth client %q" .client_id .client_id) -}}
{{- end -}}
{{- end -}}
{{- range $id, $_ := $v.secrets.clients -}}
{{- if not (has $id $clientIds) -}}
{{- fail (printf "secrets.clients.%s names no client in config.clients" $id) -}}
{{- end -}}
{{- end -}}
{{- $webhooks := list -}}
{{- range (($v.config.audit).webhooks | default list) -}}{{ $webhooks = append $webhooks .name }}{{- end -}}
{{- range $name, $_ := $v.secrets.webhooks -}}
{{- if not (has $name $webhooks) -}}
{{- fail (printf "secrets.webhooks.%s names no webhook in config.audit.webhooks" $name) -}}
{{- end -}}
{{- end -}}
{{- $receivers := list -}}
{{- range (($v.config.ssf).receivers | default list) -}}{{ $receivers = append $receivers .name }}{{- end -}}
{{- range $name, $_ := $v.secrets.ssfReceivers -}}
{{- if not (has $name $receivers) -}}
{{- fail (printf "secrets.ssfReceivers.%s names no receiver in config.ssf.receivers" $name) -}}
{{- end -}}
{{- end -}}
{{- if and (hasKey ($v.config.approvals | default dict) "slack") (not $v.secrets.slack.existingSecret) -}}
{{- fail "secrets.slack.existingSecret is required with config.approvals.slack: the bot token and signing secret" -}}
{{- end -}}
{{- if and $v.secrets.slack.existingSecret (not (hasKey ($v.config.approvals | default dict) "slack")) -}}
{{- fail "secrets.slack.existingSecret is set but config.approvals.slack is not: set config.approvals.slack (at least {}) to turn Slack on" -}}
{{- end -}}
{{- if and (($v.config.ssf | default dict).receivers) (not $v.secrets.ssf.existingSecret) -}}
{{- fail "secrets.ssf.existingSecret is required with config.ssf.receivers: the key that signs Security Event Tokens" -}}
{{- end -}}
{{- if and $v.serviceMonitor.enabled (not (include "jit-broker.metricsSecret" .)) -}}
{{- fail "serviceMonitor.enabled needs secrets.metrics.existingSecret: /metrics is off without a token" -}}
{{- end -}}
{{- if and $v.auditFile.enabled (not $v.auditFile.existingClaim) -}}
{{- fail "auditFile.enabled needs auditFile.existingClaim: a ReadWriteMany PersistentVolumeClaim shared by every replica" -}}
{{- end -}}
{{- $pdb := $v.podDisruptionBudget -}}
{{- if and $pdb.enabled (not $v.autoscaling.enabled) (not (kindIs "invalid" $pdb.minAvailable)) (not (kindIs "string" $pdb.minAvailable)) -}}
{{- if ge (int $pdb.minAvailable) (int $v.replicaCount) -}}
{{- fail (printf "podDisruptionBudget.minAvailable %d with replicaCount %d blocks every node drain: set replicaCount above minAvailable" (int $pdb.minAvailable) (int $v.replicaCount)) -}}
{{- end -}}
{{- end -}}
{{- if and (not (kindIs "invalid" $pdb.minAvailable)) (not (kindIs "invalid" $pdb.maxUnavailable)) -}}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable, not both (set the other to null)" -}}
{{- end -}}
{{- if and $pdb.enabled (kindIs "invalid" $pdb.minAvailable) (kindIs "invalid" $pdb.maxUnavailable) -}}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable" -}}
{{- end -}}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) -}}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" -}}
{{- end -}}
{{- if $v.ingress.enabled -}}
{{- $host := (urlParse $v.config.public_url).hostname -}}
{{- if ne $v.ingress.host $host -}}
{{- fail (printf "ingress.host (%q) must be the host of config.public_url (%q): workloads and the tokens' `iss` use that URL" $v.ingress.host $host) -}}
{{- end -}}
{{- end -}}
{{- end }}
