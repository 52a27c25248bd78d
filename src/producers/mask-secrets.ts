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

const SECRET_VALUE = [
  /\baq_[0-9a-f]{16}_[A-Za-z0-9_-]{32}\b/g, // agentq API keys (src/shared/infra/db/api-keys.ts)
  /\bAIza[0-9A-Za-z_-]{35}\b/g, // Google API keys (Gemini)
  /\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}/gi, // an Authorization header's value
  /\bsk-[A-Za-z0-9_-]{20,}\b/g, // OpenAI / Anthropic style secret keys
  /\b(ghp|gho|ghs|github_pat)_[A-Za-z0-9_]{20,}\b/g, // GitHub tokens
  /\bxox[abposr]-[A-Za-z0-9-]{10,}\b/g, // Slack tokens
  /\beyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\b/g, // JWTs
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
