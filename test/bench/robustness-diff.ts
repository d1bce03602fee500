/**
 * Which elements of a step's H, R, G and grad W_dec change when Dawn's robustness transform is off (runner/robustness.ts): the
 * same step (test/gpu/engine.test.ts's first group: a ReLU Vanilla, a JumpReLU Matryoshka and a ReLU Matryoshka
 * SAE, d_vit 17, d_sae 51, batch 37) on two Dawn instances, with and without `disable_robustness`, compared
 * bit for bit. On SwiftShader with direct matmuls, G differed in the Matryoshka SAEs' columns whose thread spans more
 * than one block (GRAD_F's per-thread block loop, nBlocks mode), and so did grad W_dec (GRAD_W_DEC, the same loop),
 * until blockOf stopped breaking out of its search (shaders/kernels.ts; test/bench/robustness-repro.ts). Now nothing
 * differs, direct or tiled: the clamps change no arithmetic.
 *   node --import tsx test/bench/robustness-diff.ts     (ROBUST_MATMUL=direct|tiled, default direct)
 */
import { existsSync } from "node:fs";
import { SaeEngine } from "../../shaders/engine";
import { requestSaeDevice } from "../../shaders/device";
import { prefixBounds } from "../../shaders/schedule";
import { trainConfig } from "../helpers/train-config";

const ICD = "/usr/lib/chromium/vk_swiftshader_icd.json";
if (!process.env.VK_ICD_FILENAMES && existsSync(ICD) && !existsSync("/dev/nvidia0")) process.env.VK_ICD_FILENAMES = ICD;
const { create, globals } = await import("webgpu");
Object.assign(globalThis, globals);

const d = 17, B = 37, n = 3 * d;
const cfgs = [
  trainConfig({ sae_batch_size: B, lr: 1e-3, sae: { d_vit: d, exp_factor: 3, seed: 1 }, objective: { sparsity_coeff: 3e-2 } }),
  trainConfig({ sae_batch_size: B, sae: { d_vit: d, exp_factor: 3, kind: "jumprelu", bandwidth: 0.3, seed: 2 }, objective: { kind: "matryoshka", n_prefixes: 4, sparsity_coeff: 5e-2 } }),
  trainConfig({ sae_batch_size: B, n_lr_warmup: 20, sae: { d_vit: d, exp_factor: 3, seed: 3, remove_parallel_grads: false }, objective: { kind: "matryoshka", n_prefixes: 6 } }),
];
const matmul = (process.env.ROBUST_MATMUL ?? "direct") as "direct" | "tiled";
const x = Float32Array.from({ length: B * d }, (_, i) => Math.max(0, (Math.sin(i * 12.9898) * 43758.5453) % 1));
const names = ["H", "R", "G", "grad.W_dec"] as const;
const gpus: GPU[] = []; // kept: a collected GPU object tears its Dawn instance down under the live device
const out: Array<Record<string, Float32Array>> = [];
for (const flags of [[], ["enable-dawn-features=disable_robustness"]]) {
  const gpu = create(flags);
  gpus.push(gpu);
  const { device } = await requestSaeDevice(gpu);
  const engine = SaeEngine.create(device, cfgs, { matmul });
  engine.poison();
  await engine.step(x, { metrics: true });
  const o: Record<string, Float32Array> = {};
  for (const name of names) o[name] = await engine.readBuffer(name);
  out.push(o);
}
console.log(`matmuls ${matmul}; block bounds per SAE: ${cfgs.map((c) => `[${prefixBounds(c, 0).join(",")}]`).join(" ")}`);
for (const name of names) {
  const [a, b] = [out[0][name], out[1][name]];
  const cols = new Map<number, Set<number>>(); // per SAE, the columns (latents) that differ (G and H: [K, B, n])
  let count = 0;
  for (let i = 0; i < a.length; i++) {
    if (a[i] === b[i] || (Number.isNaN(a[i]) && Number.isNaN(b[i]))) continue;
    count++;
    const sae = Math.floor(i / (B * n));
    (cols.get(sae) ?? cols.set(sae, new Set()).get(sae)!).add(i % n);
  }
  const where = name === "R" || name === "grad.W_dec" ? "" : [...cols].map(([k, c]) => ` SAE ${k}: latents ${[...c].sort((p, q) => p - q).join(",")}`).join(";");
  console.log(`${name}: ${count} of ${a.length} elements differ${where}`);
}
process.exit(0); // two Dawn instances: leave without tearing them down
