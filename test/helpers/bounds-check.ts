/**
 * Instruments WGSL so that every index into a storage binding is checked against the binding's length
 * (arrayLength) before use: an index past it adds 1 to an atomic counter (bound at `binding`) and is replaced by 0.
 * What Dawn's robustness transform would clamp silently is counted here, whatever SAE_SWARM_ROBUSTNESS is: a kernel
 * whose count is not 0 reads or writes outside its bindings, which with robustness off reads other buffers' memory
 * or (past the allocation) crashes SwiftShader's GPU process.
 */
export function boundsChecked(code: string, binding: number): string {
  const names = [...code.matchAll(/@binding\(\d+\) var<storage[^>]*> (\w+)\s*:\s*array</g)].map((m) => m[1]);
  let out = code;
  for (const name of names) out = wrapIndices(out, name);
  return `${out}
@group(0) @binding(${binding}) var<storage, read_write> oobCount: atomic<u32>;
fn oobCheck(i: u32, len: u32) -> u32 { if (i >= len) { atomicAdd(&oobCount, 1u); return 0u; } return i; }`;
}

/** Rewrites every `name[expr]` as `name[oobCheck(expr, arrayLength(&name))]` (expr may nest brackets). */
function wrapIndices(code: string, name: string): string {
  const re = new RegExp(`\\b${name}\\[`, "g");
  let out = "";
  let at = 0;
  for (let m = re.exec(code); m; m = re.exec(code)) {
    const open = m.index + m[0].length;
    let depth = 1;
    let i = open;
    for (; i < code.length && depth > 0; i++) depth += code[i] === "[" ? 1 : code[i] === "]" ? -1 : 0;
    if (depth !== 0) throw new Error(`boundsChecked: unbalanced brackets after ${name}[`);
    // the index itself may index this binding too
    const index = wrapIndices(code.slice(open, i - 1), name);
    out += `${code.slice(at, open)}oobCheck(${index}, arrayLength(&${name}))]`;
    at = i;
    re.lastIndex = i;
  }
  return out + code.slice(at);
}
