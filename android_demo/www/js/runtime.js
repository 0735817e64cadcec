// On-device runtime: a CoGenesis Edge model bundle on onnxruntime-web (WASM), in the WebView.
//
// Bundle contract (written by the Python exporter): manifest.json, model.onnx (+ model.onnx.data),
// tokenizer.json, chat_template.jinja, generation_config.json (+ tokenizer_config.json if present).
// ONNX signature: input_ids/attention_mask/position_ids int64, past_key_values.{i}.key|value float32
// [1, kv_heads, P, head_dim] (P = 0 on the first call), optional num_logits_to_keep int64 scalar;
// outputs logits [1, S', vocab] and present.{i}.key|value.

import * as ort from '../vendor/ort.wasm.min.mjs';
import { Tokenizer } from '../vendor/tokenizers.min.mjs';
import { Template } from '../vendor/jinja.mjs';

ort.env.wasm.wasmPaths = new URL('../vendor/', import.meta.url).href;

export const ortVersion = ort.env.versions?.web ?? ort.env.versions?.common ?? '?';

/** Threads: only a cross-origin-isolated page gets SharedArrayBuffer (desktop Chromium with COOP/COEP;
 * Android WebView may not be isolated, then onnxruntime-web runs single-threaded). */
export function pickThreads(requested) {
  if (!globalThis.crossOriginIsolated) return 1;
  const hw = navigator.hardwareConcurrency || 2;
  const n = requested && requested > 0 ? requested : Math.min(4, hw);
  return Math.max(1, Math.min(n, hw));
}

function joinUrl(base, name) {
  return new URL(name, new URL(base.endsWith('/') ? base : base + '/', location.href)).href;
}

const CACHE_NAME = 'cogenesis-bundle-v1';

/** Fetch one bundle file, from Cache Storage when a copy was kept, with progress. */
export async function fetchBundleFile(url, { onProgress, keepCopy = false, onRequest } = {}) {
  let cache = null;
  if (keepCopy && globalThis.caches) {
    try { cache = await caches.open(CACHE_NAME); } catch { cache = null; }
    const hit = cache && (await cache.match(url));
    if (hit) {
      const buf = new Uint8Array(await hit.arrayBuffer());
      onProgress?.(buf.length, buf.length, 'cache');
      return buf;
    }
  }
  onRequest?.(url);
  const resp = await fetch(url, { cache: 'no-store' });
  if (!resp.ok) throw new Error(`${url}: HTTP ${resp.status}`);
  const total = Number(resp.headers.get('Content-Length')) || 0;
  let buf;
  if (resp.body && total > 0) {
    buf = new Uint8Array(total);
    let off = 0;
    const reader = resp.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (off + value.length > buf.length) { // server lied about the length: grow
        const bigger = new Uint8Array(Math.max(buf.length * 2, off + value.length));
        bigger.set(buf.subarray(0, off)); buf = bigger;
      }
      buf.set(value, off); off += value.length;
      onProgress?.(off, total, 'network');
    }
    if (off !== buf.length) buf = buf.slice(0, off);
  } else {
    buf = new Uint8Array(await resp.arrayBuffer());
    onProgress?.(buf.length, buf.length, 'network');
  }
  if (cache) {
    try { await cache.put(url, new Response(buf, { headers: { 'Content-Type': 'application/octet-stream' } })); } catch (e) {
      console.warn('could not keep a copy of', url, e);
    }
  }
  return buf;
}

export async function forgetCachedBundle() {
  if (globalThis.caches) await caches.delete(CACHE_NAME);
}

async function exists(url) {
  try {
    const r = await fetch(url, { method: 'HEAD', cache: 'no-store' });
    return r.ok;
  } catch { return false; }
}

async function fetchText(url, opts, optional = false) {
  try {
    const buf = await fetchBundleFile(url, opts);
    return new TextDecoder().decode(buf);
  } catch (e) {
    if (optional) return null;
    throw e;
  }
}

/** Mulberry32: a small seeded PRNG (sampling is reproducible per seed inside this runtime only). */
export function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function argmax(x) {
  let best = 0, bv = -Infinity;
  for (let i = 0; i < x.length; i++) if (x[i] > bv) { bv = x[i]; best = i; }
  return best;
}

export function logSoftmax(x) {
  let m = -Infinity;
  for (let i = 0; i < x.length; i++) if (x[i] > m) m = x[i];
  let s = 0;
  for (let i = 0; i < x.length; i++) s += Math.exp(x[i] - m);
  const lse = m + Math.log(s);
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = x[i] - lse;
  return out;
}

/** Temperature + top-k + top-p sampling with a seeded rng. */
export function sampleToken(logits, { temperature = 0.7, topK = 50, topP = 0.9, rng = Math.random } = {}) {
  if (!(temperature > 0)) return argmax(logits);
  const k = Math.max(1, Math.min(topK || logits.length, logits.length));
  // top-k by partial selection
  const idx = [];
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i];
    if (idx.length < k) { idx.push(i); if (idx.length === k) idx.sort((a, b) => logits[b] - logits[a]); continue; }
    if (v > logits[idx[k - 1]]) {
      let j = k - 1;
      while (j > 0 && logits[idx[j - 1]] < v) { idx[j] = idx[j - 1]; j--; }
      idx[j] = i;
    }
  }
  if (idx.length < k) idx.sort((a, b) => logits[b] - logits[a]);
  const m = logits[idx[0]];
  let probs = idx.map((i) => Math.exp((logits[i] - m) / temperature));
  const z = probs.reduce((a, b) => a + b, 0);
  probs = probs.map((p) => p / z);
  let keep = probs.length, cum = 0;
  for (let j = 0; j < probs.length; j++) { cum += probs[j]; if (cum >= topP) { keep = j + 1; break; } }
  const z2 = probs.slice(0, keep).reduce((a, b) => a + b, 0);
  let r = rng() * z2;
  for (let j = 0; j < keep; j++) { r -= probs[j]; if (r <= 0) return idx[j]; }
  return idx[keep - 1];
}

export class LocalModel {
  /**
   * Load a bundle from a base URL: '/bundle/' (the phone's external files dir, served by AssetServer)
   * or 'http://<laptop>:8765/bundle/' (devserver on the LAN; keepCopy stores it in Cache Storage).
   */
  static async load(baseUrl, { onProgress, onStatus, keepCopy = false, threads = 0, onRequest } = {}) {
    const t0 = performance.now();
    const u = (n) => joinUrl(baseUrl, n);
    const fopts = { keepCopy, onRequest };
    onStatus?.('reading manifest');
    const manifestText = await fetchText(u('manifest.json'), fopts, true);
    const manifest = manifestText ? JSON.parse(manifestText) : {};
    const files = bundleFiles(manifest);
    onStatus?.('loading tokenizer');
    const tokBytes = await fetchBundleFile(u(files.tokenizer), fopts);
    await verifyFile(files.tokenizer, tokBytes, files.table);
    const tokJson = JSON.parse(new TextDecoder().decode(tokBytes));
    const tokCfgText = await fetchText(u('tokenizer_config.json'), fopts, true);
    const tokCfg = tokCfgText ? JSON.parse(tokCfgText) : {};
    const templateSrc = (await fetchText(u(files.chatTemplate), fopts, true)) ?? tokCfg.chat_template ?? null;
    const genCfgText = await fetchText(u(files.generationConfig), fopts, true);
    const genCfg = genCfgText ? JSON.parse(genCfgText) : {};
    const tokenizer = new Tokenizer(tokJson, tokCfg);

    onStatus?.('downloading model');
    let externalName = files.externalData;
    if (externalName === undefined) externalName = (await exists(u(files.model + '.data'))) ? files.model + '.data' : null;
    const names = [files.model, ...(externalName ? [externalName] : [])];
    const sizes = {};
    const prog = (name) => (done, total, src) => {
      sizes[name] = { done, total };
      const d = Object.values(sizes).reduce((a, s) => a + s.done, 0);
      const t = Object.values(sizes).reduce((a, s) => a + s.total, 0);
      onProgress?.(d, t, src);
    };
    const modelBytes = await fetchBundleFile(u(files.model), { ...fopts, onProgress: prog(files.model) });
    const extBytes = externalName ? await fetchBundleFile(u(externalName), { ...fopts, onProgress: prog(externalName) }) : null;

    if (Object.keys(files.table).length) {
      onStatus?.('verifying sha256');
      await verifyFile(files.model, modelBytes, files.table);
      if (extBytes) await verifyFile(externalName, extBytes, files.table);
    }

    onStatus?.('creating session');
    ort.env.wasm.numThreads = pickThreads(threads);
    const opts = { executionProviders: ['wasm'], graphOptimizationLevel: 'all' };
    if (extBytes) opts.externalData = [{ path: externalName.split('/').pop(), data: extBytes }];
    const session = await ort.InferenceSession.create(modelBytes, opts);
    const m = new LocalModel(session, tokenizer, templateSrc, genCfg, manifest, {
      baseUrl, bytes: modelBytes.length + (extBytes ? extBytes.length : 0), names,
      loadSeconds: (performance.now() - t0) / 1000, threads: ort.env.wasm.numThreads,
    });
    return m;
  }

  constructor(session, tokenizer, templateSrc, genCfg, manifest, info) {
    this.session = session;
    this.tokenizer = tokenizer;
    this.template = templateSrc ? new Template(templateSrc) : null;
    this.genCfg = genCfg;
    this.manifest = manifest;
    this.info = info;
    const inputs = session.inputNames;
    this.layers = inputs.filter((n) => /^past_key_values\.\d+\.key$/.test(n)).length;
    this.hasLogitsToKeep = inputs.includes('num_logits_to_keep');
    this.hasPositionIds = inputs.includes('position_ids');
    // kv heads / head dim: from the ONNX metadata when onnxruntime-web exposes it, else the manifest, else SmolLM2-135M's.
    let kvHeads = manifest?.model?.num_kv_heads ?? 3;
    let headDim = manifest?.model?.head_dim ?? 64;
    const meta = session.inputMetadata;
    if (Array.isArray(meta)) {
      const kv = meta.find((x) => x.name === 'past_key_values.0.key');
      if (kv?.shape?.length === 4) {
        if (typeof kv.shape[1] === 'number') kvHeads = kv.shape[1];
        if (typeof kv.shape[3] === 'number') headDim = kv.shape[3];
      }
    }
    this.kvHeads = kvHeads;
    this.headDim = headDim;
    const eos = manifest?.special_tokens?.eos_token_ids ?? genCfg.eos_token_id ?? [];
    this.eosIds = new Set((Array.isArray(eos) ? eos : [eos]).filter((x) => x != null));
    const imEnd = tokenizer.token_to_id('<|im_end|>'); // ChatML turn end
    if (imEnd !== undefined) this.eosIds.add(imEnd);
    this.info.layers = this.layers;
    this.info.kvHeads = kvHeads;
    this.info.headDim = headDim;
    this.info.ort = ortVersion;
  }

  /** Render messages with the bundle's chat template (SmolLM2: ChatML) and add the generation prompt. */
  renderChat(messages) {
    if (this.template) {
      const strings = this.manifest?.special_tokens?.strings ?? { bos_token: '<|im_start|>', eos_token: '<|im_end|>' };
      return this.template.render({ ...strings, messages, add_generation_prompt: true });
    }
    return messages.map((m) => `<|im_start|>${m.role}\n${m.content}<|im_end|>\n`).join('') + '<|im_start|>assistant\n';
  }

  encode(text) {
    return this.tokenizer.encode(text, { add_special_tokens: false }).ids.map(Number);
  }

  decode(ids, skipSpecial = true) {
    return this.tokenizer.decode(ids, { skip_special_tokens: skipSpecial });
  }

  newState() {
    const past = {};
    for (let i = 0; i < this.layers; i++) {
      for (const kind of ['key', 'value']) {
        past[`past_key_values.${i}.${kind}`] = new ort.Tensor('float32', new Float32Array(0), [1, this.kvHeads, 0, this.headDim]);
      }
    }
    return { past, pos: 0 };
  }

  /** Run ids through the model, extend the KV cache, return the last position's logits (Float32Array). */
  async forward(state, ids) {
    const S = ids.length;
    const P = state.pos;
    const feeds = { ...state.past };
    feeds.input_ids = new ort.Tensor('int64', BigInt64Array.from(ids, (x) => BigInt(x)), [1, S]);
    feeds.attention_mask = new ort.Tensor('int64', new BigInt64Array(P + S).fill(1n), [1, P + S]);
    if (this.hasPositionIds) {
      const pos = new BigInt64Array(S);
      for (let i = 0; i < S; i++) pos[i] = BigInt(P + i);
      feeds.position_ids = new ort.Tensor('int64', pos, [1, S]);
    }
    if (this.hasLogitsToKeep) feeds.num_logits_to_keep = new ort.Tensor('int64', BigInt64Array.from([1n]), []);
    const out = await this.session.run(feeds);
    for (let i = 0; i < this.layers; i++) {
      for (const kind of ['key', 'value']) {
        const old = state.past[`past_key_values.${i}.${kind}`];
        state.past[`past_key_values.${i}.${kind}`] = out[`present.${i}.${kind}`];
        if (old && old !== out[`present.${i}.${kind}`] && typeof old.dispose === 'function') old.dispose();
      }
    }
    state.pos = P + S;
    const logits = out.logits;
    const V = logits.dims[2];
    const rows = logits.dims[1];
    const data = logits.data;
    const last = data.slice((rows - 1) * V, rows * V);
    logits.dispose?.();
    return last;
  }

  /**
   * Generate after promptIds. opts: maxNewTokens, sampling ('greedy' | 'seeded'), seed, temperature, topK, topP,
   * signal (AbortSignal), onToken({id, ids, text, step, tokPerSec}), pickNext(localLogits, ctx) (logits mode).
   * Returns {ids, text, prefillSeconds, decodeSeconds, tokensPerSecond, stoppedBy}.
   */
  async generate(promptIds, opts = {}) {
    const {
      maxNewTokens = 128, sampling = 'greedy', seed = 0, temperature = 0.7, topK = 50, topP = 0.9,
      signal, onToken, pickNext,
    } = opts;
    const rng = mulberry32(seed);
    const state = this.newState();
    const t0 = performance.now();
    let logits = await this.forward(state, promptIds);
    const prefillSeconds = (performance.now() - t0) / 1000;
    const ids = [];
    let stoppedBy = 'max_tokens';
    const t1 = performance.now();
    for (let step = 0; step < maxNewTokens; step++) {
      if (signal?.aborted) { stoppedBy = 'stopped'; break; }
      let next;
      if (pickNext) next = await pickNext(logits, { ids, step, rng });
      else if (sampling === 'greedy') next = argmax(logits);
      else next = sampleToken(logits, { temperature, topK, topP, rng });
      if (this.eosIds.has(next)) { stoppedBy = 'eos'; break; }
      ids.push(next);
      const elapsed = (performance.now() - t1) / 1000;
      onToken?.({ id: next, ids, step, text: this.decode(ids), tokPerSec: ids.length / Math.max(elapsed, 1e-6) });
      if (step + 1 >= maxNewTokens) break;
      logits = await this.forward(state, [next]);
      // let the WebView paint the streamed text between steps
      await new Promise((r) => setTimeout(r, 0));
    }
    const decodeSeconds = (performance.now() - t1) / 1000;
    return {
      ids, text: this.decode(ids), prefillSeconds, decodeSeconds, promptTokens: promptIds.length,
      tokensPerSecond: ids.length > 1 ? (ids.length - 1) / Math.max(decodeSeconds, 1e-6) : 0, stoppedBy,
    };
  }
}

/**
 * Which files make up the bundle. The exporter's manifest.json (format "cogenesis-bundle" v1) names them:
 * onnx.file / onnx.data, tokenizer, chat_template, generation_config, and files: {name: {sha256, size}}.
 * Without a manifest the contract's default names are used and model.onnx.data is probed with HEAD.
 */
export function bundleFiles(manifest) {
  const m = manifest ?? {};
  const table = m.files && typeof m.files === 'object' && !Array.isArray(m.files) ? m.files : {};
  const names = Object.keys(table);
  const pick = (...c) => c.find((x) => typeof x === 'string' && x.length > 0);
  const model = pick(m.onnx?.file, names.find((x) => x.endsWith('.onnx'))) ?? 'model.onnx';
  const data = pick(m.onnx?.data, m.onnx?.external_data, names.find((x) => x === model + '.data' || x.endsWith('.onnx.data')));
  return {
    model,
    externalData: data ?? (names.length || m.onnx ? null : undefined), // undefined = unknown, probe with HEAD
    tokenizer: pick(m.tokenizer) ?? 'tokenizer.json',
    chatTemplate: pick(m.chat_template) ?? 'chat_template.jinja',
    generationConfig: pick(m.generation_config) ?? 'generation_config.json',
    table,
  };
}

/** sha256 of bytes as hex (WebCrypto: available in secure contexts such as https://appassets...). */
export async function sha256Hex(bytes) {
  const d = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  return Array.from(d, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Check a file against manifest.json's files table (size + sha256), like cogenesis.runtime.bundle.verify_bundle. */
export async function verifyFile(name, bytes, table) {
  const want = table?.[name];
  if (!want) return false;
  if (want.size != null && want.size !== bytes.length) {
    throw new Error(`${name}: ${bytes.length} bytes, manifest.json says ${want.size} (incomplete copy? push/download it again)`);
  }
  if (want.sha256 && globalThis.crypto?.subtle) {
    const got = await sha256Hex(bytes);
    if (got !== want.sha256) throw new Error(`${name}: sha256 ${got.slice(0, 12)}… does not match manifest.json (${want.sha256.slice(0, 12)}…); copy the bundle again`);
  }
  return true;
}
