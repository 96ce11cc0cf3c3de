// Durations as the broker writes them: "90" or "90s", "15m", "2h", "1h30m", "1d".

const UNITS = { s: 1, m: 60, h: 3600, d: 86400 };

/** Seconds in a duration string; throws on anything else. */
export function parseDuration(text, name) {
  const value = String(text).trim();
  if (/^\d+$/.test(value)) return Number(value);
  const parts = [...value.matchAll(/(\d+)([smhd])/g)];
  if (value === '' || parts.map((m) => m[0]).join('') !== value) {
    throw new Error(`${name}: "${value}" is not a duration (examples: 90s, 15m, 1h30m)`);
  }
  return parts.reduce((sum, m) => sum + Number(m[1]) * UNITS[m[2]], 0);
}
