/**
 * Secrets never reach an operator's screen: job data, results and progress pass through here before
 * Bull Board shows them. A field whose NAME says it holds a credential is replaced whole; a string that
 * LOOKS like a credential (an agentq or Google API key, a bearer/basic header, common provider tokens) is
 * replaced wherever it appears, since a user may paste one into free text.
 */
export const MASK = '[masked]';

// The last word of a field name decides: `accessToken` is a secret, `tokensUsed` and `tokenCount` are not.
const SECRET_LAST_WORD = new Set(['token', 'secret', 'password', 'passwd', 'pwd', 'passphrase', 'authorization', 'auth', 'cookie', 'credential', 'credentials', 'apikey']);
const SECRET_KEY_QUALIFIER = new Set(['api', 'private', 'access', 'secret', 'signing', 'encryption', 'client', 'master', 'session']);

// Each key ends where its alphabet ends, `(?![\w-])`, not at a word boundary: a base64url key ends in `-`
// one time in 64, and `\b` after a `-` would then need a letter next, so the key would show.
const SECRET_VALUE = [
  /\baq_[0-9a-f]{16}_[\w-]{32}(?![\w-])/g, // agentq API keys (src/shared/infra/db/api-keys.ts)
  /\bAIza[\w-]{35}(?![\w-])/g, // Google API keys (Gemini)
  /\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}/gi, // an Authorization header's value
  /\bsk-[\w-]{20,}/g, // OpenAI / Anthropic style secret keys
  /\b(ghp|gho|ghs|github_pat)_\w{20,}/g, // GitHub tokens
  /\bxox[abposr]-[A-Za-z0-9-]{10,}/g, // Slack tokens
  /\beyJ[\w-]{10,}\.[\w-]{10,}\.[\w-]{10,}/g, // JWTs
];

function wordsOf(name: string): string[] {
  return name
    .replace(/([a-z0-9])([A-Z])/g, '$1 $2')
    .replace(/([A-Z]+)([A-Z][a-z])/g, '$1 $2')
    .split(/[^A-Za-z0-9]+/)
    .filter(Boolean)
    .map((w) => w.toLowerCase());
}

/** Whether a field of this name holds a credential (`apiKey`, `x-api-key`, `refresh_token`, `Authorization`...). */
export function isSecretField(name: string): boolean {
  const words = wordsOf(name);
  const last = words.at(-1);
  if (!last) return false;
  if (SECRET_LAST_WORD.has(last)) return true;
  return last === 'key' && words.length > 1 && SECRET_KEY_QUALIFIER.has(words.at(-2)!);
}

export function maskSecretText(text: string): string {
  return SECRET_VALUE.reduce((t, re) => t.replace(re, MASK), text);
}

/** A masked copy of `value` (the input is never changed); deeper than `maxDepth` is cut, cycles too. */
export function maskSecrets(value: unknown, maxDepth = 32): unknown {
  const seen = new WeakSet<object>();
  const walk = (v: unknown, depth: number): unknown => {
    if (typeof v === 'string') return maskSecretText(v);
    if (v === null || typeof v !== 'object') return v;
    if (depth >= maxDepth || seen.has(v)) return '[…]';
    seen.add(v);
    if (Array.isArray(v)) return v.map((x) => walk(x, depth + 1));
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) out[k] = isSecretField(k) && x !== null && x !== undefined && x !== '' ? MASK : walk(x, depth + 1);
    return out;
  };
  return walk(value, 0);
}
