// llama.cpp decode/prefill timing and greedy tokens, through node-llama-cpp's prebuilt llama.cpp (CPU backend).
//
//   node bench/llamacpp_decode.mjs < request.json      (one JSON object on stdout)
//
// Request: {gguf, threads, new_tokens, prompt, long_prompt, greedy_prompts, greedy_tokens, texts}; token ids come
// from the caller so every runtime in bench/edge_decode.py sees the same inputs. new_tokens 0 skips the timing.
// Sampling is greedy (temperature 0, no penalties); EOS is not a stop (fixed length, like our decoders).
// Timing protocol = edge_decode.run_ort: warm-up; prefill of `prompt` (to its first token); new_tokens single-token
// decodes; then a fresh prefill of `long_prompt`. llama.cpp's own counters (llama_perf_context) are reported too.
// Install: bash bench/llamacpp_setup.sh (into .cache/llamacpp-node; NODE_LLAMA_CPP_DIR overrides).
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const dir = process.env.NODE_LLAMA_CPP_DIR
  ?? path.join(path.dirname(fileURLToPath(import.meta.url)), "..", ".cache", "llamacpp-node");
const pkgDir = path.join(dir, "node_modules", "node-llama-cpp");
const { getLlama, LlamaLogLevel } = await import(path.join(pkgDir, "dist", "index.js"));

const req = JSON.parse(readFileSync(0, "utf8"));
const now = () => Number(process.hrtime.bigint()) / 1e9;
const logs = [];
const llama = await getLlama({ gpu: false, build: "never", maxThreads: 0, logLevel: LlamaLogLevel.info,
  progressLogs: false, logger: (_level, message) => logs.push(message) });
let t = now();
const model = await llama.loadModel({ modelPath: req.gguf, gpuLayers: 0 });
const ctx = await model.createContext({ contextSize: 2048, batchSize: 512, threads: req.threads, sequences: 1,
  performanceTracking: true });
const loadS = now() - t;
const seq = ctx.getSequence();

/** Greedy from a fresh sequence: [s to the first token (prefill + 1 sample), s for the next n tokens, tokens,
 * process CPU s for the next n tokens]. */
async function generate(prompt, n) {
  await seq.clearHistory();
  const t0 = now();
  const it = seq.evaluate(prompt, { temperature: 0 });
  const toks = [(await it.next()).value];
  const t1 = now();
  const c1 = process.cpuUsage();
  for (let i = 0; i < n; i++) toks.push((await it.next()).value);
  const c2 = process.cpuUsage(c1);
  const t2 = now();
  await it.return();
  return [t1 - t0, t2 - t1, toks, (c2.user + c2.system) / 1e6];
}

/** llama.cpp's own counters since the last call (llama_perf_context_print, then reset). */
async function perf() {
  logs.length = 0;
  await ctx.printTimings();
  const text = logs.join("\n");
  const grab = (re) => (m => (m ? [Number(m[1]), Number(m[2])] : [null, null]))(text.match(re));
  const [promptMs, promptTokens] = grab(/prompt eval time =\s*([\d.]+) ms \/\s*(\d+) tokens/);
  const [evalMs, evalRuns] = grab(/\beval time =\s*([\d.]+) ms \/\s*(\d+) runs/);
  return { prompt_ms: promptMs, prompt_tokens: promptTokens, eval_ms: evalMs, eval_runs: evalRuns };
}

const out = {};
if (req.new_tokens > 0) {
  await generate(req.prompt.slice(0, 16), 4); // warm up
  const [pre200] = await generate(req.prompt, 0);
  await perf();
  const [, decodeS, , decodeCpuS] = await generate(req.prompt, req.new_tokens);
  const internal = await perf();
  await seq.clearHistory();
  t = now();
  await seq.evaluateWithoutGeneratingNewTokens(req.long_prompt);
  const preLong = now() - t;
  const internalLong = await perf();
  Object.assign(out, { load_s: loadS, prefill_200_s: pre200, decode_tok_s: req.new_tokens / decodeS,
    prefill_1500_s: preLong, decode_cpu_s_per_tok: decodeCpuS / req.new_tokens, prompt_tokens: req.prompt.length, long_prompt_tokens: req.long_prompt.length,
    internal_decode_tok_s: internal.eval_runs ? internal.eval_runs / (internal.eval_ms / 1e3) : null,
    internal_prefill_1500_s: internalLong.prompt_ms != null ? internalLong.prompt_ms / 1e3 : null,
    internal_perf: internal });
}
out.greedy = [];
for (const p of req.greedy_prompts ?? []) out.greedy.push((await generate(p, req.greedy_tokens - 1))[2]);
out.tokenized = (req.texts ?? []).map(s => Array.from(model.tokenize(s, true)));
const nlc = JSON.parse(readFileSync(path.join(pkgDir, "package.json"), "utf8")).version;
out.llamacpp = { release: llama.llamaCppRelease.release, repo: llama.llamaCppRelease.repo,
  binding: `node-llama-cpp ${nlc}`, build_type: llama.buildType, gpu: llama.gpu, threads: ctx.currentThreads,
  flash_attention: ctx.flashAttention, batch_size: ctx.batchSize, context_size: ctx.contextSize,
  system_info: llama.systemInfo, node: process.version };
// VmHWM starts afresh at exec; maxRSS would include the spawning Python process's peak (Linux keeps it across exec)
const hwm = (() => { try { return /VmHWM:\s+(\d+)/.exec(readFileSync("/proc/self/status", "utf8"))[1]; } catch { return null; } })();
out.peak_rss_mb = (hwm ? Number(hwm) : process.resourceUsage().maxRSS) / 1024;
process.stdout.write(JSON.stringify(out) + "\n");
await ctx.dispose();
await model.dispose();
await llama.dispose();
