{{/*
The broker's config file (broker/config.py), built key by key: only keys the broker knows are
rendered (it refuses unknown ones). values.schema.json already refused any other key under
.Values.config; here the chart adds what it owns: host, port, redis (from .Values.redis),
shutdown (from .Values.drain), policy_dir and every *_file key, pointing at the mounts of
templates/deployment.yaml.
*/}}
{{- define "jit-broker.brokerConfig" -}}
{{- $v := .Values -}}
{{- $c := $v.config -}}
{{- $p := include "jit-broker.paths" . | fromYaml -}}
{{- $out := dict
  "public_url" $c.public_url
  "broker_audience" $c.broker_audience
  "key_prefix" $c.key_prefix
  "host" "0.0.0.0"
  "port" (int $v.containerPort)
  "redis" (include "jit-broker.redisConfig" . | fromYaml)
  "policy_dir" $p.policies
-}}
{{- with $c.identity }}{{ $_ := set $out "identity" . }}{{ end -}}
{{- $issuers := dict -}}
{{- range $name, $issuer := $c.issuers -}}
{{- $cfg := deepCopy ($issuer.config | default dict) -}}
{{- if and (eq $issuer.type "jwt") (not (hasKey $cfg "keys_dir")) -}}
{{- $_ := set $cfg "keys_dir" (printf "%s/%s" $p.issuers (include "jit-broker.pathName" $name)) -}}
{{- end -}}
{{- $_ := set $issuers $name (dict "type" $issuer.type "config" $cfg) -}}
{{- end -}}
{{- with $issuers }}{{ $_ := set $out "issuers" . }}{{ end -}}
{{- $clients := list -}}
{{- range $c.clients -}}
{{- $client := dict "client_id" .client_id "secret_file" (printf "%s/%s/secret" $p.clients (include "jit-broker.pathName" .client_id)) -}}
{{- with .permissions }}{{ $_ := set $client "permissions" . }}{{ end -}}
{{- with .resources }}{{ $_ := set $client "resources" . }}{{ end -}}
{{- $clients = append $clients $client -}}
{{- end -}}
{{- with $clients }}{{ $_ := set $out "clients" . }}{{ end -}}
{{- with $c.reaper }}{{ $_ := set $out "reaper" . }}{{ end -}}
{{- with $c.limits }}{{ $_ := set $out "limits" . }}{{ end -}}
{{- with $c.quotas }}{{ $_ := set $out "quotas" . }}{{ end -}}
{{- /* audit: the keys, the optional shared file, webhooks with their tokens */ -}}
{{- $audit := omit ($c.audit | default dict) "webhooks" -}}
{{- $_ := set $audit "signing_key_file" (printf "%s/signing-key.pem" $p.audit) -}}
{{- $_ := set $audit "hmac_key_file" (printf "%s/hmac-key" $p.audit) -}}
{{- if $v.auditFile.enabled -}}
{{- $_ := set $audit "file" (printf "%s/%s" $p.auditFile $v.auditFile.fileName) -}}
{{- end -}}
{{- $webhooks := list -}}
{{- range (($c.audit | default dict).webhooks | default list) -}}
{{- $hook := deepCopy . -}}
{{- if index $v.secrets.webhooks .name -}}
{{- $_ := set $hook "token_file" (printf "%s/%s/token" $p.webhooks (include "jit-broker.pathName" .name)) -}}
{{- end -}}
{{- $webhooks = append $webhooks $hook -}}
{{- end -}}
{{- with $webhooks }}{{ $_ := set $audit "webhooks" . }}{{ end -}}
{{- $_ := set $out "audit" $audit -}}
{{- /* approvals: Slack credentials from secrets.slack */ -}}
{{- with $c.approvals -}}
{{- $approvals := deepCopy . -}}
{{- if hasKey $approvals "slack" -}}
{{- $slack := deepCopy ($approvals.slack | default dict) -}}
{{- $_ := set $slack "bot_token_file" (printf "%s/bot-token" $p.slack) -}}
{{- $_ := set $slack "signing_secret_file" (printf "%s/signing-secret" $p.slack) -}}
{{- $_ := set $approvals "slack" $slack -}}
{{- end -}}
{{- $_ := set $out "approvals" $approvals -}}
{{- end -}}
{{- /* ssf: the signing key and receivers with their tokens */ -}}
{{- $ssf := dict -}}
{{- if $v.secrets.ssf.existingSecret -}}
{{- $_ := set $ssf "signing_key_file" (printf "%s/signing-key.pem" $p.ssf) -}}
{{- end -}}
{{- $receivers := list -}}
{{- range (($c.ssf | default dict).receivers | default list) -}}
{{- $r := deepCopy . -}}
{{- if index $v.secrets.ssfReceivers .name -}}
{{- $_ := set $r "token_file" (printf "%s/%s/token" $p.ssfReceivers (include "jit-broker.pathName" .name)) -}}
{{- end -}}
{{- $receivers = append $receivers $r -}}
{{- end -}}
{{- with $receivers }}{{ $_ := set $ssf "receivers" . }}{{ end -}}
{{- with $ssf }}{{ $_ := set $out "ssf" . }}{{ end -}}
{{- if include "jit-broker.metricsSecret" . -}}
{{- $_ := set $out "metrics" (dict "token_file" (printf "%s/token" $p.metrics)) -}}
{{- end -}}
{{- $drain := include "jit-broker.drain" . | fromYaml -}}
{{- $_ := set $out "shutdown" (dict "drain_delay" (printf "%ds" (int $drain.delay)) "drain_timeout" (printf "%ds" (int $drain.timeout))) -}}
{{- with $c.logging }}{{ $_ := set $out "logging" . }}{{ end -}}
{{- toYaml $out -}}
{{- end }}
