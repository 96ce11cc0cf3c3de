// The job's OIDC identity token, from the Actions runtime (core.getIDToken), fetched again
// when the one held is about to expire.
import * as core from '@actions/core';

const REFRESH_BEFORE_S = 60;

export class MissingIdTokenPermission extends Error {}

/** Seconds since the epoch at which a JWT expires, or 0 if it cannot be read. */
function expiry(jwt) {
  try {
    const payload = JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString('utf8'));
    return typeof payload.exp === 'number' ? payload.exp : 0;
  } catch {
    return 0;
  }
}

export class IdToken {
  constructor(audience, now = () => Date.now() / 1000) {
    this.audience = audience;
    this.now = now;
    this.token = null;
    this.expires = 0;
  }

  async get() {
    if (this.token && this.expires - this.now() > REFRESH_BEFORE_S) return this.token;
    if (!process.env.ACTIONS_ID_TOKEN_REQUEST_URL || !process.env.ACTIONS_ID_TOKEN_REQUEST_TOKEN) {
      throw new MissingIdTokenPermission(
        'this job cannot get an OIDC token: ACTIONS_ID_TOKEN_REQUEST_URL / ACTIONS_ID_TOKEN_REQUEST_TOKEN are not set. ' +
          'Give the job (or the workflow) `permissions: id-token: write`; ' +
          'workflows triggered by pull requests from forks never get it.',
      );
    }
    try {
      this.token = await core.getIDToken(this.audience); // masks the token in the log
    } catch (err) {
      throw new Error(`cannot get the job's OIDC token for audience "${this.audience}": ${err.message}`);
    }
    this.expires = expiry(this.token);
    return this.token;
  }
}
