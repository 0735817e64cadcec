// Privacy guard: what may leave the phone. Same rules as the Python bridge's egress guard.
//
// Before any request, the exact body that is about to be sent is scanned for private spans:
//   * profile values (whole value, case-insensitive, on word boundaries; values of 5+ words also by
//     5-word n-grams), values shorter than 3 characters are ignored (an "Age: 34" would match everywhere);
//   * 5-word n-grams of past writings, their titles (3+ words, whole) and private notes;
//   * e-mail addresses and phone numbers (8-15 digits), whether or not they are in the private context.
// Strict mode blocks the request when anything is found; otherwise it is sent and the findings are logged.
// Token-id prompts (logits mode) are decoded back to text by the caller and scanned as text too.

export const NGRAM = 5;
const WORD_RE = /[\p{L}\p{N}]+(?:['’][\p{L}\p{N}]+)*/gu;
const EMAIL_RE = /[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}/g;
const PHONE_RE = /(?<![\w+])\+?\(?\d[\d\s().\-]{6,20}\d(?!\w)/g;

export function words(text) {
  return Array.from(String(text ?? '').toLowerCase().matchAll(WORD_RE), (m) => m[0].replace('’', "'"));
}

function escapeRe(s) {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function valueRegex(value) {
  const parts = String(value).trim().split(/\s+/).map(escapeRe);
  return new RegExp(`(?<![\\p{L}\\p{N}])${parts.join('\\s+')}(?![\\p{L}\\p{N}])`, 'iu');
}

/** Build the guard's index from a private context {profile: {k: v}, history: [{title, text}], private: [str]}. */
export function buildIndex(ctx) {
  const values = [];   // {label, re, value}
  const grams = new Map(); // "w1 w2 w3 w4 w5" -> label
  const addGrams = (label, text) => {
    const w = words(text);
    for (let i = 0; i + NGRAM <= w.length; i++) {
      const g = w.slice(i, i + NGRAM).join(' ');
      if (!grams.has(g)) grams.set(g, label);
    }
  };
  for (const [k, v] of Object.entries(ctx?.profile ?? {})) {
    const val = String(v ?? '').trim();
    if (val.length < 3) continue;
    values.push({ label: `profile.${k}`, re: valueRegex(val), value: val });
    if (words(val).length >= NGRAM) addGrams(`profile.${k}`, val);
  }
  (ctx?.history ?? []).forEach((h, i) => {
    const title = String(h?.title ?? '').trim();
    if (words(title).length >= 3) values.push({ label: `history[${i}].title`, re: valueRegex(title), value: title });
    addGrams(`history[${i}].text`, h?.text ?? '');
  });
  (ctx?.private ?? []).forEach((t, i) => addGrams(`private[${i}]`, t));
  return { values, grams };
}

/**
 * Scan text for private spans. Returns [{kind, label, match}] (deduplicated, n-gram hits merged into runs).
 * `texts` is one string or an array of strings (e.g. every string in a JSON body + a decoded token prompt).
 */
export function scan(texts, index) {
  const all = Array.isArray(texts) ? texts : [texts];
  const found = [];
  const seen = new Set();
  const add = (f) => {
    const key = `${f.kind}|${f.label}|${f.match.toLowerCase()}`;
    if (!seen.has(key)) { seen.add(key); found.push(f); }
  };
  for (const text of all) {
    if (!text) continue;
    for (const v of index.values) {
      const m = v.re.exec(text);
      if (m) add({ kind: 'profile', label: v.label, match: m[0] });
    }
    const w = words(text);
    let run = null; // merge consecutive n-gram hits into one span
    for (let i = 0; i + NGRAM <= w.length; i++) {
      const label = index.grams.get(w.slice(i, i + NGRAM).join(' '));
      if (label && run && run.label === label && i <= run.end) {
        run.end = i + NGRAM;
      } else if (label) {
        if (run) add({ kind: 'writing', label: run.label, match: w.slice(run.start, run.end).join(' ') });
        run = { label, start: i, end: i + NGRAM };
      }
    }
    if (run) add({ kind: 'writing', label: run.label, match: w.slice(run.start, run.end).join(' ') });
    for (const m of text.matchAll(EMAIL_RE)) add({ kind: 'email', label: 'pattern.email', match: m[0] });
    for (const m of text.matchAll(PHONE_RE)) {
      const digits = m[0].replace(/\D/g, '');
      if (digits.length >= 8 && digits.length <= 15) add({ kind: 'phone', label: 'pattern.phone', match: m[0].trim() });
    }
  }
  return found;
}

/** Every string leaf of a JSON value (so escaping in the serialized body can't hide a span). */
export function stringLeaves(value, out = []) {
  if (typeof value === 'string') out.push(value);
  else if (Array.isArray(value)) value.forEach((v) => stringLeaves(v, out));
  else if (value && typeof value === 'object') Object.values(value).forEach((v) => stringLeaves(v, out));
  return out;
}

/** Decide: {allowed, findings, verdict} for a body about to be sent. */
export function check(bodyObj, bodyText, index, { strict = true, extraTexts = [] } = {}) {
  const findings = scan([bodyText, ...stringLeaves(bodyObj), ...extraTexts], index);
  const allowed = findings.length === 0 || !strict;
  const verdict = findings.length === 0 ? 'clean' : strict ? 'blocked' : 'sent-with-findings';
  return { allowed, findings, verdict };
}
