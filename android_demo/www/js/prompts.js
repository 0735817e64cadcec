// Prompt builders for the local model. The private context only ever goes into these local prompts.

export const LOCAL_SYSTEM = 'You are a writing assistant running privately on the user\'s phone. You write AS the user, in the first person. '
  + 'Write in the user\'s own voice, using their profile and past writings for style and facts.';

/** Same layout as cogenesis.core.context.PrivateContext.render(): profile lines, then past writings, then notes. */
export function renderContext(ctx, { maxHistory = 3, maxCharsPerSample = 600 } = {}) {
  const lines = [];
  const prof = Object.entries(ctx?.profile ?? {}).filter(([k, v]) => k && String(v ?? '').trim());
  if (prof.length) {
    lines.push('User profile:');
    for (const [k, v] of prof) lines.push(`${k}: ${v}`);
  }
  const hist = (ctx?.history ?? []).filter((h) => String(h?.text ?? '').trim()).slice(0, maxHistory);
  if (hist.length) {
    lines.push('');
    lines.push('Past writings by the user:');
    for (const h of hist) lines.push(`- ${h.title}: ${String(h.text).slice(0, maxCharsPerSample)}`);
  }
  for (const t of ctx?.private ?? []) {
    if (String(t).trim()) { lines.push(''); lines.push(String(t)); }
  }
  return lines.join('\n').trim();
}

export function localMessages(ctx, instruction, outline = null) {
  const parts = [];
  const rc = renderContext(ctx);
  if (rc) parts.push(rc, '');
  parts.push(`Task: ${instruction}`);
  if (outline) parts.push('', 'Outline to follow:', outline);
  parts.push('', 'Write the text now.');
  return [
    { role: 'system', content: LOCAL_SYSTEM },
    { role: 'user', content: parts.join('\n') },
  ];
}

/** What the cloud sees in logits mode: the instruction alone, as a chat prompt (token ids). */
export function cloudLogitsMessages(instruction) {
  return [
    { role: 'system', content: 'You are a helpful writing assistant.' },
    { role: 'user', content: `Task: ${instruction}\n\nWrite the text now.` },
  ];
}
