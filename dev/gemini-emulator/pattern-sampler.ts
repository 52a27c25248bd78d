import type { Rng } from './seeded.js';

/** A prompt word reduced to lower-case ASCII letters and digits. */
export const ascii = (w: string): string => w.normalize('NFKD').replace(/[^a-z0-9]/gi, '').toLowerCase();

/*
 * Strings from a pattern's own syntax tree: literals, classes, escapes, groups, alternation and quantifiers are
 * generated; anchors, word boundaries and lookarounds are zero-width and left to the final test. Every branch and
 * count is chosen within the length still free, so a bounded pattern meets minLength and maxLength by design.
 */
type Node =
  | { t: 'lit'; s: string }
  | { t: 'set'; re: RegExp }
  | { t: 'seq'; items: Node[] }
  | { t: 'alt'; alts: Node[] }
  | { t: 'rep'; node: Node; min: number; max: number };

const EMPTY: Node = { t: 'lit', s: '' };
/** Characters a class is drawn from, in order of preference: a class takes the first tier it has members in. */
const CHAR_TIERS = ['abcdefghijklmnopqrstuvwxyz0123456789', 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', "-_.@+/=:' ~!#$%&*,;?^|()[]{}<>\\`\"", ' \t\n', 'éßøñü', '✅✨👍🎉🚀'].map((t) => Array.from(t));
const FREE: Node = { t: 'rep', node: { t: 'set', re: /^[a-z0-9]$/ }, min: 0, max: Infinity };

class UnsupportedPattern extends Error {}

function parsePattern(src: string): Node {
  const cs = Array.from(src);
  let i = 0;
  const set = (body: string): Node => ({ t: 'set', re: new RegExp(`^${body}$`, 'u') });
  const escape = (): Node => {
    const c = cs[i++];
    if ('dDwWsS'.includes(c)) return set(`\\${c}`);
    if (c === 'b' || c === 'B') return EMPTY;
    if (/[1-9]/.test(c) || c === 'k') throw new UnsupportedPattern('backreference');
    if (c === 'p' || c === 'P') {
      const end = cs.indexOf('}', i);
      const body = cs.slice(i - 2, end + 1).join('');
      i = end + 1;
      return set(body);
    }
    if (c === 'u' && cs[i] === '{') {
      const end = cs.indexOf('}', i);
      const cp = parseInt(cs.slice(i + 1, end).join(''), 16);
      i = end + 1;
      return { t: 'lit', s: String.fromCodePoint(cp) };
    }
    if (c === 'u' || c === 'x') {
      const n = c === 'u' ? 4 : 2;
      const code = parseInt(cs.slice(i, i + n).join(''), 16);
      i += n;
      return { t: 'lit', s: String.fromCharCode(code) };
    }
    const controls: Record<string, string> = { t: '\t', n: '\n', r: '\r', f: '\f', v: '\v', 0: '\0' };
    return { t: 'lit', s: controls[c] ?? c };
  };
  const atom = (): Node => {
    const c = cs[i++];
    if (c === '^' || c === '$') return EMPTY;
    if (c === '.') return set('.');
    if (c === '\\') return escape();
    if (c === '[') {
      const start = i - 1;
      while (i < cs.length && cs[i] !== ']') i += cs[i] === '\\' ? 2 : 1;
      i++;
      return set(cs.slice(start, i).join(''));
    }
    if (c === '(') {
      let zeroWidth = false;
      if (cs[i] === '?') {
        const head = cs.slice(i, i + 3).join('');
        zeroWidth = /^\?(=|!|<=|<!)/.test(head);
        if (head.startsWith('?:') || head.startsWith('?=') || head.startsWith('?!')) i += 2;
        else if (head.startsWith('?<=') || head.startsWith('?<!')) i += 3;
        else if (head.startsWith('?<')) i = cs.indexOf('>', i) + 1;
      }
      const inner = alternation();
      i++; // the closing parenthesis
      return zeroWidth ? EMPTY : inner;
    }
    return { t: 'lit', s: c };
  };
  const quantified = (node: Node): Node => {
    const c = cs[i];
    let min: number;
    let max: number;
    if (c === '*' || c === '+' || c === '?') {
      i++;
      [min, max] = c === '*' ? [0, Infinity] : c === '+' ? [1, Infinity] : [0, 1];
    } else if (c === '{' && /^\{\d+(,\d*)?\}/.test(cs.slice(i, i + 24).join(''))) {
      const m = /^\{(\d+)(,(\d*))?\}/.exec(cs.slice(i, i + 24).join(''))!;
      i += m[0].length;
      min = Number(m[1]);
      max = m[2] === undefined ? min : m[3] === '' ? Infinity : Number(m[3]);
    } else return node;
    if (cs[i] === '?') i++;
    return { t: 'rep', node, min, max };
  };
  const sequence = (): Node => {
    const items: Node[] = [];
    while (i < cs.length && cs[i] !== '|' && cs[i] !== ')') items.push(quantified(atom()));
    return { t: 'seq', items };
  };
  const alternation = (): Node => {
    const alts = [sequence()];
    while (cs[i] === '|') {
      i++;
      alts.push(sequence());
    }
    return alts.length === 1 ? alts[0] : { t: 'alt', alts };
  };
  const tree = alternation();
  // JSON Schema patterns are searched for, not anchored: an unanchored side may carry more text.
  return { t: 'seq', items: [src.startsWith('^') ? EMPTY : FREE, tree, /(^|[^\\])\$$/.test(src) ? EMPTY : FREE] };
}

function lengths(n: Node): [number, number] {
  switch (n.t) {
    case 'lit':
      return [n.s.length, n.s.length];
    case 'set':
      return [1, 1];
    case 'seq':
      return n.items.map(lengths).reduce(([a, b], [c, d]) => [a + c, b + d], [0, 0]);
    case 'alt':
      return n.alts.map(lengths).reduce(([a, b], [c, d]) => [Math.min(a, c), Math.max(b, d)], [Infinity, 0]);
    case 'rep': {
      const [a, b] = lengths(n.node);
      return [a * n.min, n.max === 0 || b === 0 ? 0 : b * n.max];
    }
  }
}

interface Gen {
  rng: Rng;
  words: readonly string[];
}

/** Fills `parts` in order, each within what the ones after it still need (lo) and still allow (hi). */
function genSeq(parts: Node[], lo: number, hi: number, g: Gen): string {
  const spans = parts.map(lengths);
  let out = '';
  for (let k = 0; k < parts.length; k++) {
    let restMin = 0;
    let restMax = 0;
    for (let j = k + 1; j < parts.length; j++) [restMin, restMax] = [restMin + spans[j][0], restMax + spans[j][1]];
    out += gen(parts[k], Math.max(spans[k][0], lo - out.length - restMax), Math.min(spans[k][1], hi - out.length - restMin), g);
  }
  return out;
}

function gen(n: Node, lo: number, hi: number, g: Gen): string {
  switch (n.t) {
    case 'lit':
      return n.s;
    case 'set': {
      for (const tier of CHAR_TIERS) {
        const members = tier.filter((c) => n.re.test(c));
        if (members.length > 0) return g.rng.pick(members);
      }
      throw new UnsupportedPattern('empty class');
    }
    case 'seq':
      return genSeq(n.items, lo, hi, g);
    case 'alt': {
      const fit = n.alts.filter((a) => {
        const [a0, a1] = lengths(a);
        return a0 <= hi && a1 >= lo;
      });
      return gen(g.rng.pick(fit.length > 0 ? fit : n.alts), lo, hi, g);
    }
    case 'rep': {
      const [c0, c1] = lengths(n.node);
      const least = Math.max(n.min, c1 > 0 && Number.isFinite(c1) ? Math.ceil(lo / c1) : n.min);
      const most = Math.min(n.max, c0 > 0 ? Math.floor(hi / c0) : n.max);
      // An open-ended run of a class that takes letters reads best as one of the prompt's words.
      if (n.max === Infinity && n.node.t === 'set') {
        const set = n.node.re;
        const fits = g.words.map(ascii).filter((w) => w.length >= least && w.length <= most && Array.from(w).every((c) => set.test(c)));
        if (fits.length > 0 && g.rng.next() < 0.75) return g.rng.pick(fits);
      }
      const span = Number.isFinite(n.max) ? n.max - n.min : 3;
      const count = Math.max(least, Math.min(most, n.min + g.rng.int(0, span)));
      return genSeq(Array.from({ length: count }, () => n.node), lo, hi, g);
    }
  }
}

/** A deterministic search: a few seeded tries of the generator, the first that passes the real test wins. */
export function fromPattern(pattern: string, min: number, max: number, words: readonly string[], rng: Rng, fits: (v: string) => boolean): string | undefined {
  let tree: Node;
  try {
    tree = parsePattern(pattern);
  } catch (err) {
    if (err instanceof UnsupportedPattern || err instanceof SyntaxError) return undefined;
    throw err;
  }
  for (let k = 0; k < 24; k++) {
    let v: string;
    try {
      v = gen(tree, min, max, { rng: rng.fork(`pattern#${k}`), words });
    } catch (err) {
      if (err instanceof UnsupportedPattern) return undefined;
      throw err;
    }
    if (fits(v)) return v;
  }
  return undefined;
}
