// Egress privacy guard, on the phone: a JavaScript port of cogenesis.cloud_bridge.guard (EgressGuard), the
// same rules as the Python bridge, checked against it by tests/test_android_demo.py::test_guard_parity_with_python.
//
// * verbatim spans: runs of >= 4 consecutive *content words* (lower-cased \w+ tokens minus stop words and
//   generic instruction words) shared with a private text (profile facts, past writings, private notes);
//   a run breaks at sentence/clause punctuation and where more than 3 non-content words intervene.
//   Short ";"-separated facts with >= 3 content words match whole.
// * identifiers: short high-value profile values matched exactly as whole words, case-insensitively: names
//   (and each part; single words only when not written all lower case), places (and components), contact
//   fields; e-mails, phones and identifier-like tokens found in any private text. Age/Gender never match by
//   value; descriptive fields (Occupation, traits, style) only by n-grams.
// * patterns (no context needed): e-mails, phone numbers, card numbers (Luhn), IBANs (mod 97), SSN-like
//   numbers, street addresses.
// Modes: strict (any finding blocks the request), audit (sent, findings logged), off (not inspected).
// Token-id lists in a body ({"prompt": [12, 345]}) are scanned through a detokenize function.
//
// Known differences from Python: offsets are UTF-16 code units (Python: code points), card/IBAN/SSN digits
// are ASCII only, and casefold() is approximated (NFKC + toLowerCase + ß->ss, ς->σ).

export const MODES = ['strict', 'audit', 'off'];
export const DEFAULT_NGRAM = 4;
export const RAW_NGRAM = 8; // words of any kind (guard.py RAW_NGRAM)
export const ITEM_RAW_NGRAM = 6; // within one ";"-separated item of a profile fact field
export const SANITIZE_NGRAM = 3;
const MIN_FACT_ITEM = 3;
const MAX_GAP_WORDS = 3;
const MAX_MATCH_CHARS = 200;

const STOPWORDS = new Set(`a an the and or nor but if then else of to in on at by for with from as into onto about over under after
    before between through during without within upon up down out off again further once is are was were be been
    being am this that these those it its i me my mine we us our ours you your yours he him his she her hers they
    them their theirs what which who whom whose how when where why not no so than too very can will just do does
    did doing have has had having should would could may might must shall also via per s t d ll m re ve all any
    both each few more most other some such only own same here there`.split(/\s+/).filter(Boolean));
const TASK_WORDS = new Set(`write compose craft create develop draft generate produce prepare design outline pen compile make put
    together blog post posts piece pieces essay article articles guide review reflective reflection series social
    media detailed comprehensive step proposal script letter email newsletter report summary speech story short
    poem op ed opinion editorial press release discuss discussing highlight highlights highlighting include
    including focus focusing latest new recent tips`.split(/\s+/).filter(Boolean));
const NON_CONTENT = new Set([...STOPWORDS, ...TASK_WORDS]);

const NAME_KEYS = new Set(['name', 'firstname', 'lastname', 'fullname', 'surname', 'nickname']);
const PLACE_KEYS = new Set(['location', 'city', 'town', 'hometown', 'residence', 'country', 'state', 'region']);
const CONTACT_KEYS = new Set(['address', 'street', 'email', 'mail', 'phone', 'mobile', 'telephone', 'tel', 'username',
  'handle', 'birthday', 'birthdate', 'dob', 'ssn', 'passport', 'account', 'iban', 'postcode', 'zip', 'zipcode', 'contact']);
const SKIP_KEYS = new Set(['age', 'gender', 'sex', 'pronouns']);
const DESCRIPTIVE_KEYS = new Set(['occupation', 'job', 'profession', 'role', 'traits', 'personality', 'style', 'tone']);
const HONORIFICS = new Set(['dr', 'mr', 'mrs', 'ms', 'mx', 'prof', 'jr', 'sr', 'ii', 'iii', 'phd', 'md']);

// Python's \w (str patterns) = letters, numbers, underscore; \d = Unicode decimal digits.
const W = '[\\p{L}\\p{N}_]';
const NW = '[^\\p{L}\\p{N}_]';
const D = '\\p{Nd}';
const WORD_RE = /[\p{L}\p{N}_]+/gu;
const BREAK_RE = new RegExp(`[.!?;:()\\[\\]{}"\\n\\u201c\\u201d]|(?<!${W})['\\u2018\\u2019]|['\\u2018\\u2019](?!${W})`, 'u');
const EMAIL_RE = new RegExp(`(?<![\\p{L}\\p{N}_.+\\-])[A-Za-z0-9._%+\\-]+@[A-Za-z0-9\\-]+(?:\\.[A-Za-z0-9\\-]+)*\\.[A-Za-z]{2,}(?![\\p{L}\\p{N}_\\-])`, 'gu');
const PHONE_RE = new RegExp(
  `(?<![\\p{L}\\p{N}_+])(?:\\+${D}{1,3}[ .\\-]?)?(?:\\(${D}{1,4}\\)[ .\\-]?)?${D}{2,4}(?:[ .\\-]${D}{2,4}){1,4}(?!${W})`
  + `|(?<![\\p{L}\\p{N}_+])\\+?${D}{10,15}(?!${W})`, 'gu');
const CARD_RE = /(?<![0-9-])[0-9](?:[ -]?[0-9]){12,18}(?![0-9-])/gu;
const IBAN_RE = new RegExp(`(?<!${W})[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}(?!${W})`, 'gu');
const SSN_RE = /(?<![0-9-])[0-9]{3}-[0-9]{2}-[0-9]{4}(?![0-9-])/gu;
const STREET_RE = new RegExp(`(?<!${W})${D}{1,5}\\s+((?:[A-Z][A-Za-z'.\\-]*\\s+){1,4})(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr`
  + `|Court|Ct|Place|Pl|Terrace|Way|Parkway|Pkwy|Highway|Hwy|Square|Sq)(?!${W})`, 'gu');
const IDLIKE_TOKEN_RE = new RegExp(`(?<![\\p{L}\\p{N}_.\\-])${W}[\\p{L}\\p{N}_.\\-]{4,}${W}(?![\\p{L}\\p{N}_\\-])`, 'gu');
const LETTER = '[\\p{L}\\p{Nl}\\p{No}]'; // Python [^\W\d_]
const IDLIKE_MIX_RE = new RegExp(`${LETTER}${D}|${D}(?!(?:st|nd|rd|th|s)(?!${W}))${LETTER}`, 'iu');

const PATTERN_REPLACEMENT = {
  email: '[email]', phone: '[phone]', credit_card: '[card number]', iban: '[account number]',
  national_id: '[id number]', street_address: '[address]',
};
const FACT_REPLACEMENT = '[private detail]';

export function casefold(s) {
  return String(s).normalize('NFKC').toLowerCase().replace(/ß/g, 'ss').replace(/ς/g, 'σ');
}

function normPhrase(s) {
  return casefold(s).split(/\s+/).filter(Boolean).join(' ');
}

function escapeRe(s) {
  return s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
}

function isLower(s) { // Python str.islower(): has a cased character and no upper/title-case one
  return s === s.toLowerCase() && s !== s.toUpperCase();
}

/** Content words grouped into runs that an n-gram may span: [[ [word, start, end], ... ], ...]. */
export function contentSegments(text) {
  const segs = [[]];
  let gap = 0;
  let lastEnd = 0;
  for (const m of text.matchAll(WORD_RE)) {
    const w = casefold(m[0]);
    const start = m.index;
    const end = start + m[0].length;
    if (segs[segs.length - 1].length && BREAK_RE.test(text.slice(Math.max(lastEnd - 1, 0), start + 1))) {
      segs.push([]);
      gap = 0;
    }
    lastEnd = end;
    if (NON_CONTENT.has(w)) { gap += 1; continue; }
    if (gap > MAX_GAP_WORDS && segs[segs.length - 1].length) segs.push([]);
    gap = 0;
    segs[segs.length - 1].push([w, start, end]);
  }
  return segs.filter((s) => s.length);
}

export function contentTokens(text) {
  return contentSegments(text).flat();
}

export function fieldClass(key) {
  const k = casefold(key);
  const parts = new Set(k.split(/[\s_\-.]+/).filter(Boolean));
  parts.add(k.replace(/[\s_\-.]+/g, ''));
  const has = (set) => [...parts].some((p) => set.has(p));
  if (has(SKIP_KEYS)) return 'skip';
  if (has(NAME_KEYS)) return 'name';
  if (has(PLACE_KEYS)) return 'place';
  if (has(CONTACT_KEYS)) return 'contact';
  if (has(DESCRIPTIVE_KEYS)) return 'descriptive';
  return 'fact';
}

function phoneOk(s) {
  const digits = (s.match(/\p{Nd}/gu) || []).length;
  const t = s.replace(/^\s+/, '');
  return digits >= 9 && digits <= 15 && (t.startsWith('+') || t.startsWith('(') || digits >= 10 || /[ .-]/.test(s));
}

function luhnOk(digits) {
  let total = 0;
  for (let i = 0; i < digits.length; i++) {
    let d = Number(digits[digits.length - 1 - i]);
    if (i % 2) d = d > 4 ? d * 2 - 9 : d * 2;
    total += d;
  }
  return total % 10 === 0;
}

function ibanOk(s) {
  s = s.replace(/ /g, '');
  if (s.length < 15 || s.length > 34) return false;
  const r = s.slice(4) + s.slice(0, 4);
  let mod = 0;
  for (const c of r) {
    const v = parseInt(c, 36);
    for (const ch of String(v)) mod = (mod * 10 + Number(ch)) % 97;
  }
  return mod === 1;
}

class SpanIndex {
  constructor(n) {
    if (n < 2) throw new Error(`ngram must be >= 2 content words, got ${n}`);
    this.n = n;
    this.grams = new Map();
    this.lengths = new Set([n]);
  }

  add(text, source, items = false) {
    for (const seg of contentSegments(text)) {
      const ws = seg.map((t) => t[0]);
      for (let i = 0; i + this.n <= ws.length; i++) {
        const key = ws.slice(i, i + this.n).join(' ');
        if (!this.grams.has(key)) this.grams.set(key, source);
      }
    }
    if (items) {
      for (const item of text.split(/[;\n]/)) {
        const iw = contentTokens(item).map((t) => t[0]);
        if (iw.length >= MIN_FACT_ITEM && iw.length < this.n) {
          const key = iw.join(' ');
          if (!this.grams.has(key)) this.grams.set(key, source);
          this.lengths.add(iw.length);
        }
      }
    }
  }

  /** [[start, end, source], ...] character spans of private n-gram matches, overlapping ones merged. */
  find(text) {
    if (!this.grams.size) return [];
    const out = [];
    const lengths = [...this.lengths].sort((a, b) => a - b);
    for (const seg of contentSegments(text)) {
      const ws = seg.map((t) => t[0]);
      const hits = [];
      for (const n of lengths) {
        for (let i = 0; i + n <= ws.length; i++) {
          const src = this.grams.get(ws.slice(i, i + n).join(' '));
          if (src !== undefined) hits.push([i, i + n - 1, src]);
        }
      }
      hits.sort((x, y) => x[0] - y[0] || x[1] - y[1] || (x[2] < y[2] ? -1 : x[2] > y[2] ? 1 : 0));
      const runs = [];
      for (const [a, b, src] of hits) {
        const last = runs[runs.length - 1];
        if (last && a <= last[1]) { last[1] = Math.max(last[1], b); last[2].push(src); } else runs.push([a, b, [src]]);
      }
      for (const [a, b, srcs] of runs) out.push([seg[a][1], seg[b][2], mostCommon(srcs)]);
    }
    return out;
  }
}

function foldWord(w) { // guard.py _fold_word: casefold, accents dropped
  const c = casefold(w);
  return /^[\x00-\x7f]*$/.test(c) ? c : c.normalize('NFKD').replace(/\p{Mn}/gu, '');
}

/** Runs of `n` consecutive words, stop words counted (guard.py _RunIndex). */
class RunIndex {
  constructor(n) {
    this.n = n;
    this.grams = new Map();
  }

  add(text, source) {
    const ws = [...text.matchAll(WORD_RE)].map((m) => foldWord(m[0]));
    for (let i = 0; i + this.n <= ws.length; i++) {
      const g = ws.slice(i, i + this.n);
      if (g.every((w) => NON_CONTENT.has(w))) continue; // task boilerplate, no content word
      const key = g.join(' ');
      if (!this.grams.has(key)) this.grams.set(key, source);
    }
  }

  find(text) {
    if (!this.grams.size) return [];
    const toks = [...text.matchAll(WORD_RE)].map((m) => [foldWord(m[0]), m.index, m.index + m[0].length]);
    const runs = [];
    for (let i = 0; i + this.n <= toks.length; i++) {
      const src = this.grams.get(toks.slice(i, i + this.n).map((t) => t[0]).join(' '));
      if (src === undefined) continue;
      const last = runs[runs.length - 1];
      if (last && i <= last[1]) last[1] = i + this.n - 1; else runs.push([i, i + this.n - 1, src]);
    }
    return runs.map(([a, b, src]) => [toks[a][1], toks[b][2], src]);
  }
}

function mostCommon(xs) { // collections.Counter(xs).most_common(1)[0][0]: ties go to the first seen
  const c = new Map();
  for (const x of xs) c.set(x, (c.get(x) || 0) + 1);
  let best = null; let bc = -1;
  for (const [k, v] of c) if (v > bc) { best = k; bc = v; }
  return best;
}

export class PrivacyViolation extends Error {
  constructor(endpoint, findings) {
    const shown = findings.slice(0, 5).map(describe).join('; ');
    const more = findings.length > 5 ? `; ... and ${findings.length - 5} more` : '';
    super(`refusing to send to ${endpoint}: ${findings.length} finding(s): ${shown}${more}`);
    this.endpoint = endpoint;
    this.findings = findings;
  }
}

function describe(f) {
  const where = f.path ? ` at ${f.path}` : '';
  if (f.kind === 'uninspectable') return `${f.match}${where}`;
  return `${f.kind} from ${f.source}: "${f.match.slice(0, 80)}"${where}`;
}

function patternFindings(text, path) {
  const out = [];
  const taken = [];
  const add = (kind, m) => {
    const s = m.index; const e = s + m[0].length;
    if (!taken.some(([a, b]) => a < e && s < b)) {
      taken.push([s, e]);
      out.push({ kind, source: `pattern.${kind}`, match: m[0], start: s, end: e, path });
    }
  };
  for (const m of text.matchAll(EMAIL_RE)) add('email', m);
  for (const m of text.matchAll(IBAN_RE)) if (ibanOk(m[0])) add('iban', m);
  for (const m of text.matchAll(CARD_RE)) if (luhnOk(m[0].replace(/\D/g, ''))) add('credit_card', m);
  for (const m of text.matchAll(SSN_RE)) add('national_id', m);
  for (const m of text.matchAll(PHONE_RE)) if (phoneOk(m[0])) add('phone', m);
  for (const m of text.matchAll(STREET_RE)) {
    if (!m[1].split(/\s+/).filter(Boolean).some((w) => NON_CONTENT.has(casefold(w)))) add('street_address', m);
  }
  return out;
}

export class EgressGuard {
  /**
   * context: {profile: {field: value}, history: [{title, text}], private: [text]} (the phone's private context).
   * detokenize: ids -> text, so token-id prompts can be inspected (without it strict mode refuses them).
   */
  constructor(context = {}, { mode = 'strict', detokenize = null, ngram = DEFAULT_NGRAM } = {}) {
    if (!MODES.includes(mode)) throw new Error(`mode must be one of ${MODES.join(', ')}; got ${mode}`);
    this.mode = mode;
    this.detokenize = detokenize;
    this.spans = new SpanIndex(ngram);
    this.facts = new SpanIndex(Math.min(SANITIZE_NGRAM, ngram));
    this.runs = new RunIndex(RAW_NGRAM);
    this.itemRuns = new RunIndex(ITEM_RAW_NGRAM);
    this.exact = new Map(); // normalized phrase -> {source, replacement, capOnly}
    this.exactRe = null;
    for (const [key, value] of Object.entries(context?.profile ?? {})) {
      if (value && String(value).trim()) this.addProfileField(key, String(value));
    }
    (context?.history ?? []).forEach((s, i) => {
      const title = String(s?.title ?? ''); const text = String(s?.text ?? '');
      this.addTokens(title, `history[${i}].title`);
      this.spans.add(title, `history[${i}].title`);
      this.runs.add(title, `history[${i}].title`);
      this.addTokens(text, `history[${i}].text`);
      this.spans.add(text, `history[${i}].text`);
      this.runs.add(text, `history[${i}].text`);
    });
    (context?.private ?? []).forEach((t, i) => { if (String(t).trim()) this.addPrivate(String(t), `private[${i}]`); });
  }

  addPrivate(text, label, exact = null) {
    if (!text || !text.trim()) return;
    if (exact === null) exact = contentTokens(text).length < this.spans.n;
    this.addTokens(text, label);
    if (exact) this.addExact(text, label, 'a private detail', false);
    else { this.spans.add(text, label, true); this.facts.add(text, label, true); this.runs.add(text, label); }
  }

  addProfileField(key, value) {
    const label = `profile.${key}`;
    const cls = fieldClass(key);
    this.addTokens(value, label);
    if (cls === 'name') {
      this.addExact(value, label, 'the user', false);
      for (let part of value.split(/[\s,]+/)) {
        part = part.replace(/^[.'"()]+|[.'"()]+$/g, '');
        if (part.length >= 3 && !STOPWORDS.has(casefold(part)) && !HONORIFICS.has(casefold(part))) {
          this.addExact(part, label, 'the user', true);
        }
      }
    } else if (cls === 'place') {
      this.addExact(value, label, 'the city', false);
      value.split(/[,;]/).map((c) => c.trim()).forEach((comp, i) => {
        if (comp.length >= 3 && !STOPWORDS.has(casefold(comp))) {
          this.addExact(comp, label, i === 0 ? 'the city' : 'the region', !comp.includes(' '));
        }
      });
    } else if (cls === 'contact') {
      const k = casefold(key);
      const repl = k.includes('mail') ? '[email]' : k.includes('phone') ? '[phone]' : '[private]';
      for (const item of [value, ...value.split(/[;\n]/)]) {
        if (item.trim().length >= 3) this.addExact(item.trim(), label, repl, false);
      }
    } else if (cls === 'descriptive') {
      this.spans.add(value, label);
      this.runs.add(value, label);
    } else if (cls === 'fact') {
      this.spans.add(value, label, true);
      this.facts.add(value, label, true);
      this.runs.add(value, label);
      for (const item of value.split(';')) this.itemRuns.add(item, label);
    }
  }

  addTokens(text, label) {
    for (const m of text.matchAll(EMAIL_RE)) this.addExact(m[0], label, '[email]', false);
    for (const m of text.matchAll(PHONE_RE)) if (phoneOk(m[0])) this.addExact(m[0], label, '[phone]', false);
    for (const m of text.matchAll(IDLIKE_TOKEN_RE)) {
      const tok = m[0];
      if (IDLIKE_MIX_RE.test(tok) || (tok.match(/\p{Nd}/gu) || []).length >= 7) this.addExact(tok, label, '[identifier]', false);
    }
  }

  addExact(phrase, source, replacement, capOnly) {
    const key = normPhrase(phrase);
    if (key && !this.exact.has(key)) {
      this.exact.set(key, { source, replacement, capOnly });
      this.exactRe = null;
    }
  }

  exactPattern() {
    if (this.exactRe === null && this.exact.size) {
      const alts = [...this.exact.keys()].sort((a, b) => b.length - a.length);
      const body = alts.map((k) => k.split(' ').map(escapeRe).join('\\s+')).join('|');
      this.exactRe = new RegExp(`(?<!${W})(?:${body})(?!${W})`, 'giu');
    }
    return this.exactRe;
  }

  /** All findings in one string: [{kind, source, match, start, end, path}], ordered by position. */
  scanText(text, path = '') {
    const found = [];
    const pat = this.exactPattern();
    if (pat) {
      pat.lastIndex = 0;
      for (const m of text.matchAll(pat)) {
        const entry = this.exact.get(normPhrase(m[0]));
        if (!entry || (entry.capOnly && isLower(m[0]))) continue;
        found.push({ kind: 'identifier', source: entry.source, match: m[0], start: m.index, end: m.index + m[0].length, path });
      }
    }
    for (const [start, end, src] of [...this.spans.find(text), ...this.runs.find(text), ...this.itemRuns.find(text)]) {
      found.push({ kind: 'verbatim_span', source: src, match: text.slice(start, end), start, end, path });
    }
    const ident = found.filter((f) => f.kind === 'identifier').map((f) => [f.start, f.end]);
    for (const f of patternFindings(text, path)) {
      if (!ident.some(([s, e]) => s <= f.start && f.end <= e)) found.push(f);
    }
    const seen = new Set();
    const uniq = found.filter((f) => {
      const k = JSON.stringify([f.kind, f.source, f.match, f.start, f.end, f.path]);
      if (seen.has(k)) return false;
      seen.add(k);
      return true;
    });
    const kindCmp = (a, b) => (a < b ? -1 : a > b ? 1 : 0);
    return uniq.sort((a, b) => a.start - b.start || a.end - b.end || kindCmp(a.kind, b.kind));
  }

  /** Findings in a request body: every string of the JSON (keys too), token-id lists via detokenize. */
  scanBody(body) {
    if (typeof body === 'string') {
      let obj;
      try { obj = JSON.parse(body); } catch { return this.scanText(body, '$'); }
      return this.walk(obj, '$');
    }
    return this.walk(body, '$');
  }

  walk(obj, path) {
    if (typeof obj === 'string') return this.scanText(obj, path);
    if (Array.isArray(obj)) {
      if (obj.length && obj.every((x) => typeof x === 'number' && Number.isInteger(x))) return this.scanTokenIds(obj, path);
      return obj.flatMap((v, i) => this.walk(v, `${path}[${i}]`));
    }
    if (obj && typeof obj === 'object') {
      const out = [];
      for (const [k, v] of Object.entries(obj)) {
        const sub = `${path}.${k}`;
        out.push(...this.scanText(k, `${sub}#key`));
        out.push(...this.walk(v, sub));
      }
      return out;
    }
    return [];
  }

  scanTokenIds(ids, path) {
    if (!this.detokenize) {
      return [{ kind: 'uninspectable', source: 'token_ids', match: `${ids.length} token ids cannot be inspected without detokenize`, start: 0, end: ids.length, path }];
    }
    let text;
    try { text = this.detokenize(ids); } catch (e) {
      return [{ kind: 'uninspectable', source: 'token_ids', match: `${ids.length} token ids: detokenize failed (${e})`, start: 0, end: ids.length, path }];
    }
    return this.scanText(text, `${path}#tokens`);
  }

  /** The choke point: findings for a body (none when mode is off); strict mode throws PrivacyViolation. */
  inspect(endpoint, body) {
    const findings = this.mode === 'off' ? [] : this.scanBody(body);
    if (this.mode === 'strict' && findings.length) throw new PrivacyViolation(endpoint, findings);
    return findings;
  }

  /**
   * Rewrite the private facts an instruction names, generically: name -> "the user", city -> "the city",
   * e-mails/phones -> "[email]"/"[phone]", ids -> "[identifier]", shared runs of >= 3 content words ->
   * "[private detail]". Returns {text, changes: [[original, replacement], ...]} (cloud_bridge.sanitize_instruction).
   */
  sanitize(instruction) {
    const found = this.scanText(instruction).filter((f) => f.kind !== 'uninspectable');
    for (const [a, b, s] of this.facts.find(instruction)) {
      found.push({ kind: 'verbatim_span', source: s, match: instruction.slice(a, b), start: a, end: b, path: '' });
    }
    found.sort((x, y) => x.start - y.start || (y.end - y.start) - (x.end - x.start));
    const edits = [];
    for (const f of found) {
      const repl = this.replacement(f);
      const last = edits[edits.length - 1];
      if (last && f.start < last[1]) {
        if (f.end > last[1]) {
          edits[edits.length - 1] = [last[0], f.end, f.end - f.start > last[3] ? repl : last[2], Math.max(last[3], f.end - f.start)];
        }
        continue;
      }
      edits.push([f.start, f.end, repl, f.end - f.start]);
    }
    let out = ''; let pos = 0;
    const changes = [];
    for (const [start, end, r] of edits) {
      const repl = matchCase(r, instruction.slice(0, start));
      out += instruction.slice(pos, start) + repl;
      changes.push([instruction.slice(start, end), repl]);
      pos = end;
    }
    out += instruction.slice(pos);
    return { text: out, changes };
  }

  replacement(f) {
    if (f.kind === 'identifier') return this.exact.get(normPhrase(f.match))?.replacement ?? '[private]';
    if (f.kind === 'verbatim_span') return FACT_REPLACEMENT;
    return PATTERN_REPLACEMENT[f.kind] ?? '[private]';
  }
}

function matchCase(repl, before) {
  if (/^\p{L}/u.test(repl) && (!before.trim() || /[.!?:\n]\s*$/.test(before))) return repl[0].toUpperCase() + repl.slice(1);
  return repl;
}

/** A finding as the audit log keeps it (cloud_bridge.guard.Finding.to_record). */
export function toRecord(f) {
  return { kind: f.kind, source: f.source, match: f.match.slice(0, MAX_MATCH_CHARS), path: f.path };
}
