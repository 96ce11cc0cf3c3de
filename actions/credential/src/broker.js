// The broker's HTTP API, as much of it as the action needs: retries transient failures
// (connection errors, 502/503/504, honouring Retry-After) and turns problem+json into messages.
// HTTP goes through @actions/http-client, as core.getIDToken's does: the runner's proxy settings
// (https_proxy, no_proxy) apply to both.
import * as core from '@actions/core';
import { HttpClient } from '@actions/http-client';

const TRANSIENT = new Set([502, 503, 504]);
const RETRY_AFTER_CAP_S = 60;

export class BrokerError extends Error {
  constructor(message, status, problem) {
    super(message);
    this.status = status;
    this.problem = problem;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function retryAfterSeconds(header) {
  if (!header) return null;
  if (/^\d+$/.test(header.trim())) return Math.min(Number(header), RETRY_AFTER_CAP_S);
  const at = Date.parse(header);
  return Number.isNaN(at) ? null : Math.min(Math.max(0, (at - Date.now()) / 1000), RETRY_AFTER_CAP_S);
}

function backoffSeconds(attempt) {
  return Math.min(15, 2 ** (attempt - 1)) * (0.8 + 0.4 * Math.random());
}

function why(err) {
  if (/timeout/i.test(err.message)) return 'timed out';
  return err.code || err.message;
}

function parse(text) {
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

/** "Title (status): detail" and one line per reason, from a problem+json (or OAuth) body. */
export function describeProblem(status, problem) {
  if (!problem || typeof problem !== 'object') return `HTTP ${status}`;
  if (problem.error && !problem.title) return `${problem.error} (${status}): ${problem.error_description || ''}`;
  const lines = [`${problem.title || 'error'} (${status}): ${problem.detail || ''}`];
  for (const reason of problem.reasons || []) lines.push(`  - ${reason}`);
  return lines.join('\n');
}

export class Broker {
  /** url: the broker's base URL; idToken: an IdToken (a fresh bearer for every call). */
  constructor(url, idToken, { attempts = 5 } = {}) {
    this.url = url;
    this.idToken = idToken;
    this.attempts = attempts;
  }

  /** {status, body} for any answer that is not transient; throws BrokerError when it gives up. */
  async call(method, path, { body, timeoutMs = 30_000 } = {}) {
    const http = new HttpClient('jit-broker-credential-action', [], {
      allowRetries: false, // retried here, with the broker's Retry-After
      allowRedirects: false,
      socketTimeout: timeoutMs,
    });
    for (let attempt = 1; ; attempt++) {
      const headers = { Authorization: `Bearer ${await this.idToken.get()}`, Accept: 'application/json' };
      if (body !== undefined) headers['Content-Type'] = 'application/json';
      let status = 0;
      let text = '';
      let retryAfter = null;
      let failure;
      try {
        const res = await http.request(method, this.url + path, body === undefined ? null : JSON.stringify(body), headers);
        status = res.message.statusCode;
        retryAfter = res.message.headers['retry-after'];
        text = await res.readBody();
      } catch (err) {
        failure = `cannot reach the broker at ${this.url} (${why(err)})`;
      }
      if (!failure && !TRANSIENT.has(status)) return { status, body: parse(text) };
      let delay = null;
      if (!failure) {
        failure = `the broker at ${this.url} is unavailable: ${describeProblem(status, parse(text))}`;
        delay = retryAfterSeconds(retryAfter);
      }
      if (attempt >= this.attempts) throw new BrokerError(failure, status, parse(text));
      delay = delay ?? backoffSeconds(attempt);
      core.info(`${failure}; retrying in ${delay.toFixed(1)}s (attempt ${attempt} of ${this.attempts})`);
      await sleep(delay * 1000);
    }
  }
}
