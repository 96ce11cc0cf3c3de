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
redis: /etc/jit/secrets/redis
redisSentinel: /etc/jit/secrets/redis-sentinel
redisCA: /etc/jit/redis-ca
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
The broker's `redis:` block (broker/config.py) for redis.mode: where Redis is, and the paths of
the mounted password and CA files. No password is ever in it.
*/}}
{{- define "jit-broker.redisConfig" -}}
{{- $r := .Values.redis -}}
{{- $p := include "jit-broker.paths" . | fromYaml -}}
{{- $out := dict "mode" $r.mode -}}
{{- if eq $r.mode "standalone" -}}
{{- if $r.url -}}
{{- $_ := set $out "url" $r.url -}}
{{- else -}}
{{- $_ := set $out "url" (printf "%s://%s:%d/%d" (ternary "rediss" "redis" $r.tls.enabled) $r.host (int $r.port) (int $r.db)) -}}
{{- end -}}
{{- else if eq $r.mode "sentinel" -}}
{{- $_ := set $out "sentinels" $r.sentinels -}}
{{- $_ := set $out "master_name" $r.masterName -}}
{{- $_ := set $out "db" (int $r.db) -}}
{{- else -}}
{{- $_ := set $out "nodes" $r.nodes -}}
{{- end -}}
{{- with $r.username }}{{ $_ := set $out "username" . }}{{ end -}}
{{- if $r.existingSecret -}}
{{- $_ := set $out "password_file" (printf "%s/password" $p.redis) -}}
{{- end -}}
{{- if eq $r.mode "sentinel" -}}
{{- with $r.sentinelAuth.username }}{{ $_ := set $out "sentinel_username" . }}{{ end -}}
{{- if $r.sentinelAuth.existingSecret -}}
{{- $_ := set $out "sentinel_password_file" (printf "%s/password" $p.redisSentinel) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $out "tls" (include "jit-broker.redisTLS" . | eq "true") -}}
{{- if or $r.tls.ca.existingSecret $r.tls.ca.existingConfigMap -}}
{{- $_ := set $out "ca_file" (printf "%s/ca.crt" $p.redisCA) -}}
{{- end -}}
{{- $_ := set $out "max_connections" (int $r.maxConnections) -}}
{{- $_ := set $out "timeout" $r.timeout -}}
{{- $_ := set $out "wait_replicas" (int $r.waitReplicas) -}}
{{- $_ := set $out "wait_timeout" $r.waitTimeout -}}
{{- toYaml $out -}}
{{- end }}

{{/* "true" when the broker talks TLS to Redis: redis.tls.enabled, or a rediss:// redis.url. */}}
{{- define "jit-broker.redisTLS" -}}
{{- or .Values.redis.tls.enabled (hasPrefix "rediss://" .Values.redis.url) -}}
{{- end }}

{{/* The TCP ports the broker opens to Redis (for the NetworkPolicy), sorted, as a YAML list. */}}
{{- define "jit-broker.redisPorts" -}}
{{- $r := .Values.redis -}}
{{- $ports := list -}}
{{- if eq $r.mode "standalone" -}}
{{- if $r.url -}}
{{- $hp := splitList ":" (urlParse $r.url).host -}}
{{- $ports = append $ports (int (ternary (last $hp) "6379" (eq (len $hp) 2))) -}}
{{- else -}}
{{- $ports = append $ports (int $r.port) -}}
{{- end -}}
{{- else if eq $r.mode "sentinel" -}}
{{- $ports = append $ports (int $r.port) -}}
{{- range $r.sentinels }}{{ $ports = append $ports (int (splitList ":" . | last)) }}{{ end -}}
{{- else -}}
{{- range $r.nodes }}{{ $ports = append $ports (int (splitList ":" . | last)) }}{{ end -}}
{{- end -}}
{{- range .Values.networkPolicy.egress.redis.ports }}{{ $ports = append $ports (int .) }}{{ end -}}
{{- $unique := list -}}
{{- range $ports }}{{ if not (has . $unique) }}{{ $unique = append $unique . }}{{ end }}{{ end -}}
{{- toYaml $unique -}}
{{- end }}

{{/*
Whole seconds (rounded up) of a duration as the broker writes them: a number of seconds, or
"1h30m", "90s", "200ms", "7d". The schema has checked the syntax of config durations.
*/}}
{{- define "jit-broker.seconds" -}}
{{- $text := toString . -}}
{{- if regexMatch "^[0-9]+(\\.[0-9]+)?$" $text -}}
{{- ceil $text -}}
{{- else -}}
{{- $total := 0.0 -}}
{{- range regexFindAll "[0-9]+(ms|d|h|m|s)" $text -1 -}}
{{- $n := regexFind "^[0-9]+" . -}}
{{- $unit := trimPrefix $n . -}}
{{- $scale := get (dict "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 "d" 86400.0) $unit -}}
{{- $total = addf $total (mulf $n $scale) -}}
{{- end -}}
{{- ceil $total -}}
{{- end -}}
{{- end }}

{{/*
The drain timings (docs/deploy.md, Draining): the preStop sleep, the broker's shutdown delay and
timeout, the least grace period that covers them (+ reaper.issuer_timeout for the revocations
in flight to finish, + 5 s to close), and the grace period (terminationGracePeriodSeconds, or
that least one). YAML with integer seconds.
*/}}
{{- define "jit-broker.drain" -}}
{{- $v := .Values -}}
{{- $sleep := int $v.preStopSleepSeconds -}}
{{- $delay := int $v.drain.delaySeconds -}}
{{- $timeout := int $v.drain.timeoutSeconds -}}
{{- /* the broker's default reaper.issuer_timeout (a test keeps it equal) */ -}}
{{- $issuer := int (include "jit-broker.seconds" ((($v.config).reaper).issuer_timeout | default "10s")) -}}
{{- $least := add $sleep $delay $timeout $issuer 5 -}}
{{- $grace := $least -}}
{{- if not (kindIs "invalid" $v.terminationGracePeriodSeconds) -}}
{{- $grace = int $v.terminationGracePeriodSeconds -}}
{{- end -}}
{{- toYaml (dict "preStopSleep" $sleep "delay" $delay "timeout" $timeout "issuerTimeout" $issuer "least" $least "grace" $grace) -}}
{{- end }}

{{/*
Checks that the schema cannot express. Each failure names the value to set.
*/}}
{{- define "jit-broker.validate" -}}
{{- $v := .Values -}}
{{- if not $v.config.public_url -}}
{{- fail "config.public_url is required: the URL workloads use to reach the broker (the `iss` of its tokens)" -}}
{{- end -}}
{{- include "jit-broker.validateRedis" . -}}
{{- $drain := include "jit-broker.drain" . | fromYaml -}}
{{- if lt (int $drain.grace) (int $drain.least) -}}
{{- fail (printf "terminationGracePeriodSeconds %d is shorter than preStopSleepSeconds + drain.delaySeconds + drain.timeoutSeconds + config.reaper.issuer_timeout + 5 s to close (%d): the kubelet would kill the broker while it drains. Raise it, or set it to null to derive it" (int $drain.grace) (int $drain.least)) -}}
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

{{/* The Redis values, by mode (docs/deploy.md, Redis). */}}
{{- define "jit-broker.validateRedis" -}}
{{- $r := .Values.redis -}}
{{- $mode := $r.mode -}}
{{- if eq $mode "standalone" -}}
{{- if and (not $r.host) (not $r.url) -}}
{{- fail "redis.host (or redis.url) is required with redis.mode=standalone: the chart does not run Redis (docs/deploy.md, Redis)" -}}
{{- end -}}
{{- if and $r.host $r.url -}}
{{- fail "set redis.host or redis.url, not both" -}}
{{- end -}}
{{- if and $r.url $r.tls.enabled (not (hasPrefix "rediss://" $r.url)) -}}
{{- fail "redis.tls.enabled needs a rediss:// redis.url (or leave redis.url empty and set redis.host)" -}}
{{- end -}}
{{- else if eq $mode "sentinel" -}}
{{- if or (not $r.sentinels) (not $r.masterName) -}}
{{- fail "redis.mode=sentinel needs redis.sentinels (host:port of each sentinel) and redis.masterName" -}}
{{- end -}}
{{- else if eq $mode "cluster" -}}
{{- if not $r.nodes -}}
{{- fail "redis.mode=cluster needs redis.nodes (host:port of some cluster nodes)" -}}
{{- end -}}
{{- if ne (int $r.db) 0 -}}
{{- fail (printf "redis.db=%d with redis.mode=cluster: Redis Cluster has only database 0 (use config.key_prefix to share a cluster)" (int $r.db)) -}}
{{- end -}}
{{- end -}}
{{- if and (ne $mode "standalone") (or $r.host $r.url) -}}
{{- fail (printf "redis.host and redis.url are for redis.mode=standalone; with redis.mode=%s set %s" $mode (ternary "redis.sentinels" "redis.nodes" (eq $mode "sentinel"))) -}}
{{- end -}}
{{- if and (ne $mode "sentinel") (or $r.sentinels $r.masterName $r.sentinelAuth.existingSecret $r.sentinelAuth.username) -}}
{{- fail (printf "redis.sentinels, redis.masterName and redis.sentinelAuth are for redis.mode=sentinel, not %s" $mode) -}}
{{- end -}}
{{- if and (ne $mode "cluster") $r.nodes -}}
{{- fail (printf "redis.nodes is for redis.mode=cluster, not %s" $mode) -}}
{{- end -}}
{{- if and $r.tls.ca.existingSecret $r.tls.ca.existingConfigMap -}}
{{- fail "redis.tls.ca: set existingSecret or existingConfigMap, not both" -}}
{{- end -}}
{{- if and (or $r.tls.ca.existingSecret $r.tls.ca.existingConfigMap) (ne (include "jit-broker.redisTLS" .) "true") -}}
{{- fail "redis.tls.ca is set but TLS is off: set redis.tls.enabled" -}}
{{- end -}}
{{- end }}
