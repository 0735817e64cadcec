// CoGenesis Edge demo UI: screens, settings, private context storage, and the three modes.
//
// Query string (overrides settings for this launch; handy for tests and `adb shell am start --es query ...`):
//   cloud, token, cloudModel, mode (local|sketch|logits), privacy (strict|audit|off) or strict (1|0), bundle,
//   keep (0|1), threads,
//   maxTokens, sampling (greedy|seeded), seed, temperature, topP, alpha, fuseK, instruction, tab,
//   autoload (1 = load the bundle at start), example (1 = put the example private context in if empty).

import { LocalModel, fetchBundleFile, forgetCachedBundle, logSoftmax, argmax, ortVersion, pickThreads } from './runtime.js';
import { EgressLog, PrivacyViolation, requestSketch, requestNextTokenLogprobs, logGet } from './cloud.js';
import { localMessages, cloudLogitsMessages } from './prompts.js';
import * as guard from './guard.js';
import { EgressGuard, MODES } from './guard.js';

const $ = (id) => document.getElementById(id);
const SETTINGS_KEY = 'cogenesis.settings.v1';
const CONTEXT_KEY = 'cogenesis.core.context.v1';

const DEFAULTS = {
  bundleUrl: '/bundle/', keepCopy: false, threads: 0,
  cloudUrl: '', cloudToken: '', cloudModel: '', privacyMode: 'strict',
  mode: 'local', maxTokens: 160, sampling: 'greedy', seed: 0, temperature: 0.7, topP: 0.9, topK: 50,
  alpha: 0.5, fusionTopK: 10,
};

const MODE_HINTS = {
  local: 'Everything runs on the phone. Nothing is sent.',
  sketch: 'The cloud gets ONLY your instruction and returns an outline; the phone writes the text from your private context + the outline.',
  logits: 'Experimental: every step the cloud scores the next token from the instruction + text so far (token ids, no private context); the phone fuses its own and the cloud\'s log-probs.',
};

// ---------------------------------------------------------------- state
const params = new URLSearchParams(location.search);
const stored = (() => { try { return JSON.parse(localStorage.getItem(SETTINGS_KEY) || '{}'); } catch { return {}; } })();
const settings = { ...DEFAULTS, ...stored };
delete settings.strict; // older builds stored a boolean
applyQuery(settings, params);

const egress = new EgressLog();
let model = null;
let loading = null;
let abort = null;

function applyQuery(s, p) {
  const num = (k, key) => { if (p.has(k) && p.get(k) !== '' && !Number.isNaN(Number(p.get(k)))) s[key] = Number(p.get(k)); };
  const bool = (k, key) => { if (p.has(k)) s[key] = !['0', 'false', 'no', ''].includes(p.get(k).toLowerCase()); };
  if (p.has('cloud')) s.cloudUrl = p.get('cloud');
  if (p.has('token')) s.cloudToken = p.get('token');
  if (p.has('cloudModel')) s.cloudModel = p.get('cloudModel');
  if (p.has('mode') && MODE_HINTS[p.get('mode')]) s.mode = p.get('mode');
  if (p.has('bundle')) s.bundleUrl = p.get('bundle');
  if (p.has('sampling')) s.sampling = p.get('sampling') === 'seeded' ? 'seeded' : 'greedy';
  if (p.has('strict')) s.privacyMode = ['0', 'false', 'no'].includes(p.get('strict').toLowerCase()) ? 'audit' : 'strict';
  if (p.has('privacy') && MODES.includes(p.get('privacy'))) s.privacyMode = p.get('privacy');
  bool('keep', 'keepCopy');
  num('threads', 'threads'); num('maxTokens', 'maxTokens'); num('seed', 'seed'); num('temperature', 'temperature');
  num('topP', 'topP'); num('alpha', 'alpha'); num('fuseK', 'fusionTopK');
}

function saveSettings() { localStorage.setItem(SETTINGS_KEY, JSON.stringify(settings)); }

function loadContext() {
  try {
    const c = JSON.parse(localStorage.getItem(CONTEXT_KEY) || 'null');
    if (c && typeof c === 'object') return { profile: c.profile ?? {}, history: c.history ?? [], private: c.private ?? [] };
  } catch { /* fall through */ }
  return { profile: {}, history: [], private: [] };
}

function storeContext(ctx) { localStorage.setItem(CONTEXT_KEY, JSON.stringify(ctx)); }

// ---------------------------------------------------------------- tabs
function go(tab) {
  document.querySelectorAll('.screen').forEach((s) => { s.hidden = s.dataset.tab !== tab; });
  document.querySelectorAll('.tabs button').forEach((b) => b.classList.toggle('active', b.dataset.go === tab));
  if (tab === 'egress') renderEgress();
  document.querySelector('main').scrollTop = 0;
}
document.querySelectorAll('.tabs button').forEach((b) => b.addEventListener('click', () => go(b.dataset.go)));

// ---------------------------------------------------------------- settings screen
const fields = {
  'set-bundle': ['bundleUrl', 'text'], 'set-keep': ['keepCopy', 'check'], 'set-threads': ['threads', 'num'],
  'set-cloud': ['cloudUrl', 'text'], 'set-token': ['cloudToken', 'text'], 'set-cloud-model': ['cloudModel', 'text'],
  'set-privacy': ['privacyMode', 'text'], 'set-max': ['maxTokens', 'num'], 'set-sampling': ['sampling', 'text'],
  'set-seed': ['seed', 'num'], 'set-temp': ['temperature', 'num'], 'set-topp': ['topP', 'num'],
  'set-alpha': ['alpha', 'num'], 'set-fusek': ['fusionTopK', 'num'],
};
function settingsToForm() {
  for (const [id, [key, kind]] of Object.entries(fields)) {
    const el = $(id);
    if (kind === 'check') el.checked = !!settings[key]; else el.value = settings[key];
  }
  document.querySelectorAll('input[name=mode]').forEach((r) => { r.checked = r.value === settings.mode; });
  $('mode-hint').textContent = MODE_HINTS[settings.mode];
}
function formToSettings() {
  for (const [id, [key, kind]] of Object.entries(fields)) {
    const el = $(id);
    settings[key] = kind === 'check' ? el.checked : kind === 'num' ? Number(el.value) : el.value.trim();
  }
}
for (const id of Object.keys(fields)) $(id).addEventListener('change', formToSettings);
document.querySelectorAll('input[name=mode]').forEach((r) => r.addEventListener('change', () => {
  settings.mode = r.value; $('mode-hint').textContent = MODE_HINTS[settings.mode]; saveSettings();
}));
$('cloud-form').addEventListener('submit', (e) => { e.preventDefault(); formToSettings(); saveSettings(); });
$('btn-save-settings').addEventListener('click', () => { formToSettings(); saveSettings(); flash($('load-status'), 'settings saved'); });

function envInfo() {
  const lines = [
    `onnxruntime-web ${ortVersion} (wasm), crossOriginIsolated=${globalThis.crossOriginIsolated}, threads=${pickThreads(settings.threads)}`,
    `origin ${location.origin}`,
  ];
  if (model) {
    const i = model.info;
    lines.push(`bundle ${i.baseUrl}: ${i.names.join(' + ')} ${(i.bytes / 1e6).toFixed(1)} MB, ${i.layers} layers, kv ${i.kvHeads}x${i.headDim}, loaded in ${i.loadSeconds.toFixed(1)} s`);
  }
  $('env-info').textContent = lines.join('\n');
}

function flash(el, msg) { el.textContent = msg; }

// ---------------------------------------------------------------- model loading
function setChip(text, on) { const c = $('model-chip'); c.textContent = text; c.classList.toggle('on', !!on); c.classList.toggle('off', !on); }

async function loadModel() {
  if (model) return model;
  if (loading) return loading;
  formToSettings();
  const bar = $('load-bar');
  const status = $('load-status');
  const base = settings.bundleUrl || '/bundle/';
  const remote = new URL(base, location.href).origin !== location.origin;
  setChip('loading…', false);
  loading = (async () => {
    try {
      const m = await LocalModel.load(base, {
        keepCopy: settings.keepCopy, threads: settings.threads,
        onStatus: (s) => { status.textContent = s; setChip(s, false); },
        onProgress: (d, t, src) => {
          if (t) bar.style.width = `${Math.round((100 * d) / t)}%`;
          status.textContent = `model ${(d / 1e6).toFixed(1)} / ${(t / 1e6).toFixed(1)} MB (${src})`;
        },
        onRequest: remote ? (url) => logGet(egress, url, 'bundle download (model files, no private data)') : undefined,
      });
      model = m;
      bar.style.width = '100%';
      status.textContent = `loaded ${m.info.names.join(' + ')} in ${m.info.loadSeconds.toFixed(1)} s, ${m.info.threads} thread(s)`;
      setChip(`model ready · ${m.info.threads}T`, true);
      envInfo();
      return m;
    } catch (e) {
      status.textContent = `could not load the bundle from ${base}: ${e.message || e}`;
      setChip('no model', false);
      throw e;
    } finally {
      loading = null;
    }
  })();
  return loading;
}
$('btn-load').addEventListener('click', () => loadModel().catch(() => {}));
$('btn-forget').addEventListener('click', async () => { await forgetCachedBundle(); flash($('load-status'), 'cached copy removed'); });

// ---------------------------------------------------------------- private context screen
function kvRow(k = '', v = '') {
  const row = document.createElement('div');
  row.className = 'kv';
  row.innerHTML = '<input class="k" type="text" placeholder="field"><input class="v" type="text" placeholder="value"><button title="remove">×</button>';
  row.querySelector('.k').value = k; row.querySelector('.v').value = v;
  row.querySelector('button').addEventListener('click', () => row.remove());
  $('profile-rows').appendChild(row);
}
function writingRow(title = '', text = '') {
  const box = document.createElement('div');
  box.className = 'writing';
  box.innerHTML = '<div class="head"><input class="t" type="text" placeholder="title"><button class="rm" title="remove">×</button></div><textarea class="x" rows="3" placeholder="text you wrote"></textarea>';
  box.querySelector('.t').value = title; box.querySelector('.x').value = text;
  box.querySelector('.rm').addEventListener('click', () => box.remove());
  $('history-rows').appendChild(box);
}
function contextToForm(ctx) {
  $('profile-rows').innerHTML = ''; $('history-rows').innerHTML = '';
  const prof = Object.entries(ctx.profile);
  (prof.length ? prof : [['', '']]).forEach(([k, v]) => kvRow(k, v));
  (ctx.history.length ? ctx.history : [{ title: '', text: '' }]).forEach((h) => writingRow(h.title, h.text));
  $('private-notes').value = (ctx.private || []).join('\n\n');
}
function formToContext() {
  const profile = {};
  document.querySelectorAll('#profile-rows .kv').forEach((r) => {
    const k = r.querySelector('.k').value.trim(); const v = r.querySelector('.v').value.trim();
    if (k && v) profile[k] = v;
  });
  const history = [];
  document.querySelectorAll('#history-rows .writing').forEach((b) => {
    const title = b.querySelector('.t').value.trim(); const text = b.querySelector('.x').value.trim();
    if (text) history.push({ title, text });
  });
  const notes = $('private-notes').value.trim();
  return { profile, history, private: notes ? notes.split(/\n\s*\n/) : [] };
}
function contextSummary(ctx) {
  return `${Object.keys(ctx.profile).length} profile fields, ${ctx.history.length} writings, ${ctx.private.length} notes · on this device only`;
}
$('btn-add-field').addEventListener('click', () => kvRow());
$('btn-add-writing').addEventListener('click', () => writingRow());
$('btn-save-context').addEventListener('click', () => { const c = formToContext(); storeContext(c); $('context-status').textContent = 'saved: ' + contextSummary(c); });
$('btn-clear-context').addEventListener('click', () => { const c = { profile: {}, history: [], private: [] }; storeContext(c); contextToForm(c); $('context-status').textContent = 'cleared'; });
async function exampleContext() {
  const c = await (await fetch('example_context.json')).json();
  storeContext(c); contextToForm(c); $('context-status').textContent = 'example loaded: ' + contextSummary(c);
  return c;
}
$('btn-example-context').addEventListener('click', () => exampleContext());

// ---------------------------------------------------------------- egress screen
function esc(s) { return String(s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' }[c])); }
/** The exact body, with what the guard found highlighted (n-gram hits are shown in the findings list). */
function markedBody(body, findings) {
  const spans = [];
  for (const f of findings) {
    const re = new RegExp(f.match.trim().split(/\s+/).map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('(?:[^\\p{L}\\p{N}]|\\\\n)+'), 'giu');
    for (const m of body.matchAll(re)) spans.push([m.index, m.index + m[0].length]);
  }
  spans.sort((a, b) => a[0] - b[0]);
  let out = '', at = 0;
  for (const [a, b] of spans) {
    if (a < at) continue;
    out += esc(body.slice(at, a)) + '<mark>' + esc(body.slice(a, b)) + '</mark>';
    at = b;
  }
  return out + esc(body.slice(at));
}
function renderEgress() {
  const list = $('egress-list');
  const n = egress.entries.length;
  const blocked = egress.entries.filter((e) => !e.sent).length;
  $('egress-count').textContent = `${n} request(s), ${blocked} blocked`;
  const badge = $('egress-badge');
  badge.hidden = n === 0; badge.textContent = n; badge.classList.toggle('bad', blocked > 0);
  if (!n) { list.innerHTML = '<div class="empty">Nothing has left the phone.</div>'; return; }
  list.innerHTML = egress.entries.map((e) => `
    <div class="eg">
      <div class="top"><b>${esc(e.method)} ${e.sent ? '' : '(not sent)'}</b>
        <span class="verdict ${esc(e.verdict)}">${esc(e.verdict)}</span></div>
      <div class="url">${esc(e.url)}</div>
      <div class="purpose">${esc(e.purpose || '')} · ${esc(e.time.replace('T', ' ').slice(0, 19))}${e.status != null ? ' · status ' + esc(e.status) : ''}</div>
      ${e.findings.length ? e.findings.map((f) => `<div class="finding">⚠ ${esc(f.kind)} from ${esc(f.source)}: “${esc(f.match)}”${f.path ? ' at ' + esc(f.path) : ''}</div>`).join('') : `<div class="purpose">guard (${esc(e.mode || 'strict')}): ${e.verdict === 'not-inspected' ? 'not inspected' : 'nothing private found'}</div>`}
      ${e.body ? `<div class="purpose">exact body, ${e.bytes} bytes${e.sha256 ? ', sha256 ' + esc(e.sha256.slice(0, 16)) + '…' : ''}:</div><pre class="body">${markedBody(e.body, e.findings)}</pre>` : ''}
      ${e.decoded ? `<div class="purpose">token-id prompt decoded on the phone (what the guard scanned):</div><pre>${esc(e.decoded)}</pre>` : ''}
    </div>`).join('');
}
egress.onChange(renderEgress);
$('btn-clear-egress').addEventListener('click', () => egress.clear());

// ---------------------------------------------------------------- generation
function fuse(localLogits, cloud, alpha, k, temperature, sampling, rng) {
  const local = logSoftmax(localLogits);
  const cand = new Set(cloud.keys());
  // add the local top-k too, so the phone can still pick a token the cloud did not list
  const top = Array.from(local.keys()).sort((a, b) => local[b] - local[a]).slice(0, k);
  top.forEach((i) => cand.add(i));
  const floor = Math.min(...cloud.values()) - 1;
  const ids = Array.from(cand);
  const scores = ids.map((i) => (1 - alpha) * local[i] + alpha * (cloud.has(i) ? cloud.get(i) : floor));
  if (sampling !== 'seeded' || !(temperature > 0)) return ids[argmax(scores)];
  const m = Math.max(...scores);
  const p = scores.map((s) => Math.exp((s - m) / temperature));
  let r = rng() * p.reduce((a, b) => a + b, 0);
  for (let j = 0; j < ids.length; j++) { r -= p[j]; if (r <= 0) return ids[j]; }
  return ids[ids.length - 1];
}

/**
 * Run one generation. opts: instruction, mode, cloudInstruction (what the cloud gets in sketch mode when the
 * user accepted a sanitized instruction; the phone still uses the original with the private context).
 */
async function generate(opts = {}) {
  formToSettings();
  const instruction = (opts.instruction ?? $('instruction').value).trim();
  const mode = opts.mode ?? settings.mode;
  if (!instruction) throw new Error('write an instruction first');
  const ctx = loadContext();
  const out = $('output');
  const status = $('gen-status');
  out.classList.remove('error');
  out.textContent = '';
  $('gen-stats').textContent = '';
  $('outline-box').hidden = true;
  $('sanitize-box').hidden = true;
  abort = new AbortController();
  $('btn-generate').disabled = true; $('btn-stop').disabled = false;
  try {
    status.textContent = 'loading model…';
    const m = await loadModel();
    let messages;
    let outline = null;
    let pickNext;
    const notes = [];
    if (mode === 'sketch') {
      status.textContent = 'asking the cloud for an outline (instruction only)…';
      outline = await requestSketch(settings, opts.cloudInstruction ?? instruction, ctx, egress, abort.signal);
      $('outline').textContent = outline; $('outline-box').hidden = false; $('outline-box').open = true;
      messages = localMessages(ctx, instruction, outline);
      if (opts.cloudInstruction) notes.push('cloud got the sanitized instruction');
    } else {
      messages = localMessages(ctx, instruction);
    }
    if (mode === 'logits') {
      const cloudIds = m.encode(m.renderChat(cloudLogitsMessages(opts.cloudInstruction ?? instruction)));
      let cloudOff = false;
      pickNext = async (logits, { ids, rng }) => {
        if (cloudOff) return settings.sampling === 'seeded' ? fuse(logits, new Map(), 0, 40, settings.temperature, 'seeded', rng) : argmax(logits);
        const prompt = cloudIds.concat(ids);
        try {
          const lp = await requestNextTokenLogprobs(settings, prompt, (x) => m.decode(x, false), ctx, egress, (t) => m.tokenizer.token_to_id(t), abort.signal);
          return fuse(logits, lp, settings.alpha, settings.fusionTopK, settings.temperature, settings.sampling, rng);
        } catch (e) {
          if (!(e instanceof PrivacyViolation) || ids.length === 0) throw e;
          cloudOff = true; // the text so far now holds a private span: finish on the phone alone
          notes.push(`cloud dropped at token ${ids.length}: the text so far names something private`);
          return argmax(logits);
        }
      };
    }
    const promptIds = m.encode(m.renderChat(messages));
    status.textContent = `prefill ${promptIds.length} tokens…`;
    const res = await m.generate(promptIds, {
      maxNewTokens: settings.maxTokens, sampling: settings.sampling, seed: settings.seed,
      temperature: settings.temperature, topK: settings.topK, topP: settings.topP, signal: abort.signal, pickNext,
      onToken: ({ text, tokPerSec, ids }) => { out.textContent = text; status.textContent = `${ids.length} tokens · ${tokPerSec.toFixed(1)} tok/s`; },
    });
    status.textContent = `done (${res.stoppedBy})`;
    $('gen-stats').textContent = `${mode} · prompt ${res.promptTokens} tok, prefill ${res.prefillSeconds.toFixed(2)} s · `
      + `${res.ids.length} new tok, ${res.tokensPerSecond.toFixed(1)} tok/s · ${settings.sampling}${settings.sampling === 'seeded' ? ' seed ' + settings.seed : ''}`
      + (notes.length ? ' · ' + notes.join('; ') : '');
    return { ...res, mode, outline, promptIds, messages };
  } catch (e) {
    out.classList.add('error');
    if (e instanceof PrivacyViolation) {
      out.textContent = `Not sent: blocked by the privacy guard (strict mode).\n${e.findings.map((f) => `• ${f.kind} from ${f.source}: “${f.match}”`).join('\n')}\nSee the Egress tab.`;
      offerSanitized(instruction, mode, ctx);
    } else {
      out.textContent = String(e.message || e);
    }
    status.textContent = 'failed';
    throw e;
  } finally {
    $('btn-generate').disabled = false; $('btn-stop').disabled = true;
    abort = null;
  }
}

/** After a block: show the instruction with the private facts rewritten (on the phone) and offer to send that. */
function offerSanitized(instruction, mode, ctx) {
  const s = new EgressGuard(ctx, { mode: 'off' }).sanitize(instruction);
  if (!s.changes.length || new EgressGuard(ctx).scanText(s.text).length) return;
  $('sanitized').textContent = s.text;
  $('sanitize-changes').textContent = s.changes.map(([a, b]) => `“${a}” → ${b}`).join('   ');
  $('sanitize-box').hidden = false;
  $('btn-send-sanitized').onclick = () => generate({ instruction, mode, cloudInstruction: s.text }).catch((e) => console.warn(e));
}

$('btn-generate').addEventListener('click', () => generate().catch((e) => console.warn(e)));
$('btn-stop').addEventListener('click', () => abort?.abort());

// ---------------------------------------------------------------- start
settingsToForm();
contextToForm(loadContext());
$('context-status').textContent = contextSummary(loadContext());
if (params.has('instruction')) $('instruction').value = params.get('instruction');
renderEgress();
envInfo();
go(params.get('tab') || 'write');

// test / automation hook (also usable from chrome://inspect on the phone)
window.cogenesis = {
  settings, egress, guard, loadModel, generate, exampleContext, loadContext, storeContext, go, fetchBundleFile,
  get model() { return model; },
};

(async () => {
  if (params.get('example') === '1' && !Object.keys(loadContext().profile).length) await exampleContext();
  if (params.get('autoload') === '1') await loadModel().catch((e) => console.warn('autoload failed', e));
  window.cogenesisReady = true;
})();
