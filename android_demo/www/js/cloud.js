// Everything that leaves the phone goes through egressFetch(): the exact body is serialized once,
// scanned by the privacy guard, logged in the egress panel, and only then (if allowed) sent.

import { EgressGuard, PrivacyViolation, toRecord } from './guard.js';

export class EgressLog {
  constructor(storageKey = 'cogenesis.egress.v1', max = 100) {
    this.key = storageKey;
    this.max = max;
    this.listeners = new Set();
    try { this.entries = JSON.parse(localStorage.getItem(this.key) || '[]'); } catch { this.entries = []; }
  }
  add(entry) {
    this.entries.unshift(entry);
    this.entries.length = Math.min(this.entries.length, this.max);
    this.save();
    return entry;
  }
  update(entry, patch) { Object.assign(entry, patch); this.save(); }
  clear() { this.entries = []; this.save(); }
  save() {
    try { localStorage.setItem(this.key, JSON.stringify(this.entries)); } catch { /* quota: keep in memory */ }
    this.listeners.forEach((f) => f(this.entries));
  }
  onChange(f) { this.listeners.add(f); }
}

export { PrivacyViolation };

function maskAuth(headers) {
  const out = { ...headers };
  if (out.Authorization) out.Authorization = out.Authorization.replace(/^(Bearer\s+).*$/, (_, b) => b + '•••');
  return out;
}

async function sha256Hex(text) {
  if (!globalThis.crypto?.subtle) return null;
  const d = new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text)));
  return Array.from(d, (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * POST a JSON body to the cloud through the privacy guard. opts: {context, mode ('strict'|'audit'|'off'),
 * token, purpose, detokenize (ids -> text, for token-id prompts), decoded (text shown for a token-id prompt),
 * log (EgressLog), signal}. The body is serialized once; those exact bytes are scanned, logged and sent.
 * Strict mode throws PrivacyViolation (nothing is sent). Returns the parsed JSON response.
 */
export async function egressFetch(url, bodyObj, opts) {
  const { context, mode = 'strict', token = '', purpose = '', detokenize = null, decoded, log, signal } = opts;
  const bodyText = JSON.stringify(bodyObj); // = Python's json.dumps(ensure_ascii=False, separators=(",", ":"))
  const guard = new EgressGuard(context, { mode, detokenize });
  const findings = mode === 'off' ? [] : guard.scanBody(bodyObj);
  const blocked = mode === 'strict' && findings.length > 0;
  const verdict = mode === 'off' ? 'not-inspected' : !findings.length ? 'clean' : blocked ? 'blocked' : 'sent-with-findings';
  const headers = { 'Content-Type': 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  const entry = log?.add({
    time: new Date().toISOString(), method: 'POST', url, purpose, mode, headers: maskAuth(headers), body: bodyText,
    bytes: new TextEncoder().encode(bodyText).length, sha256: await sha256Hex(bodyText),
    findings: findings.map(toRecord), verdict, sent: !blocked, status: null, decoded,
  });
  if (blocked) throw new PrivacyViolation(url, findings);
  let resp;
  try {
    resp = await fetch(url, { method: 'POST', headers, body: bodyText, mode: 'cors', cache: 'no-store', signal });
  } catch (e) {
    if (entry) log.update(entry, { status: 'network error', error: String(e) });
    throw new Error(`cloud request to ${url} failed: ${e.message || e} (is the server reachable from the phone, and does it send CORS headers?)`);
  }
  const text = await resp.text();
  if (entry) log.update(entry, { status: resp.status, responseBytes: text.length });
  if (!resp.ok) throw new Error(`cloud ${url}: HTTP ${resp.status}: ${text.slice(0, 300)}`);
  try { return JSON.parse(text); } catch { throw new Error(`cloud ${url}: response is not JSON: ${text.slice(0, 200)}`); }
}

/** Record a GET that leaves the phone (a bundle fetched from a laptop), so the egress panel lists it too. */
export function logGet(log, url, purpose) {
  log?.add({
    time: new Date().toISOString(), method: 'GET', url, purpose, headers: {}, body: '', bytes: 0,
    findings: [], verdict: 'clean', sent: true, status: 'sent',
  });
}

function apiUrl(base, path) {
  const b = String(base || '').trim().replace(/\/+$/, '');
  if (!b) throw new Error('no cloud URL set (Settings)');
  return b.endsWith('/v1') ? `${b}${path.replace(/^\/v1/, '')}` : `${b}${path}`;
}

const modelCache = new Map();

/**
 * The model name to put in requests: the Cloud model setting, or (empty = auto) the first id of the server's
 * GET /v1/models, asked once per cloud URL (the GET is listed in Egress; it carries no body).
 */
export async function cloudModel(settings, log, signal) {
  if (settings.cloudModel) return settings.cloudModel;
  const url = apiUrl(settings.cloudUrl, '/v1/models');
  if (modelCache.has(url)) return modelCache.get(url);
  const headers = settings.cloudToken ? { Authorization: `Bearer ${settings.cloudToken}` } : {};
  logGet(log, url, 'which model the cloud serves (no body)');
  let data;
  try {
    const r = await fetch(url, { headers, mode: 'cors', cache: 'no-store', signal });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    data = await r.json();
  } catch (e) {
    throw new Error(`could not list the cloud's models at ${url} (${e.message || e}); set Settings → Cloud model`);
  }
  const id = data?.data?.[0]?.id;
  if (typeof id !== 'string') throw new Error(`${url} lists no model; set Settings → Cloud model`);
  modelCache.set(url, id);
  return id;
}

export const OUTLINE_SYSTEM = 'You are a planning assistant. Given a writing task, reply with a short outline only: '
  + '3 to 6 bullet points, each one line, no full sentences of the final text, no greetings.';

/** Sketch mode, step 1: ask the cloud for an outline of the instruction. Only the instruction is sent. */
export async function requestSketch(settings, instruction, ctx, log, signal) {
  const body = {
    model: await cloudModel(settings, log, signal),
    messages: [
      { role: 'system', content: OUTLINE_SYSTEM },
      { role: 'user', content: `Task: ${instruction}\n\nWrite the outline.` },
    ],
    max_tokens: 256,
    temperature: 0,
    stream: false,
  };
  const res = await egressFetch(apiUrl(settings.cloudUrl, '/v1/chat/completions'), body, {
    context: ctx, mode: settings.privacyMode, token: settings.cloudToken, purpose: 'sketch: outline request', log, signal,
  });
  const outline = res?.choices?.[0]?.message?.content ?? res?.choices?.[0]?.text;
  if (typeof outline !== 'string') throw new Error('cloud reply has no choices[0].message.content');
  return outline.trim();
}

/**
 * Logits mode (experimental), one step: POST /v1/completions with a token-id prompt (instruction prompt +
 * tokens generated so far; never the private context), max_tokens 1, top-k logprobs. Returns Map id -> logprob.
 * Accepted reply shapes: OpenAI/vLLM choices[0].logprobs.top_logprobs[0] keyed by "token_id:N" (vLLM with
 * return_tokens_as_token_ids) or by token text (mapped back through the tokenizer), or
 * choices[0].logprobs.top_ids/top_id_logprobs (plain arrays).
 */
export async function requestNextTokenLogprobs(settings, promptIds, detokenize, ctx, log, tokenToId, signal) {
  const k = Math.max(1, Math.min(20, settings.fusionTopK || 10));
  const body = {
    model: await cloudModel(settings, log, signal),
    prompt: promptIds,
    max_tokens: 1,
    temperature: 0,
    logprobs: k,
    return_tokens_as_token_ids: true,
  };
  const res = await egressFetch(apiUrl(settings.cloudUrl, '/v1/completions'), body, {
    context: ctx, mode: settings.privacyMode, token: settings.cloudToken, purpose: 'logits: next-token logprobs',
    detokenize, decoded: detokenize(promptIds), log, signal,
  });
  const lp = res?.choices?.[0]?.logprobs ?? {};
  const out = new Map();
  if (Array.isArray(lp.top_ids) && Array.isArray(lp.top_id_logprobs)) {
    lp.top_ids.forEach((id, i) => out.set(Number(id), Number(lp.top_id_logprobs[i])));
    return out;
  }
  const top = Array.isArray(lp.top_logprobs) ? lp.top_logprobs[0] : null;
  if (top && typeof top === 'object') {
    for (const [key, v] of Object.entries(top)) {
      const m = /^token_id:(\d+)$/.exec(key);
      const id = m ? Number(m[1]) : tokenToId(key);
      if (id !== undefined && id !== null) out.set(id, Number(v));
    }
  }
  if (!out.size) throw new Error('cloud reply has no usable logprobs (need choices[0].logprobs.top_logprobs)');
  return out;
}
