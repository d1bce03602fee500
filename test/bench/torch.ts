/**
 * saev's step in PyTorch (scripts/torch_step.py) at the bench's shape, for the engine/PyTorch ratio. Runs only
 * where `python3 -c "import torch"` works (Debian: apt-get install python3-torch); otherwise says why it skipped.
 */
import { spawnSync } from "node:child_process";
import path from "node:path";

export interface TorchStep {
  device: string;
  threads: number;
  ms_per_step: number;
  torch: string;
}

const script = path.join(path.dirname(new URL(import.meta.url).pathname), "../../scripts/torch_step.py");
// BENCH_PYTHON, else the first of python3 on PATH and Debian's /usr/bin/python3 (where python3-torch installs)
// that imports torch: a pyenv or venv python3 earlier on PATH often lacks it.
const pythons = process.env.BENCH_PYTHON ? [process.env.BENCH_PYTHON] : ["python3", "/usr/bin/python3"];
let python = pythons[0];

/** Null when torch imports (and picks that python); else the reason the PyTorch column is skipped. */
export function torchUnavailable(): string | null {
  if (process.env.BENCH_TORCH === "0") return "BENCH_TORCH=0";
  const why: string[] = [];
  for (const p of pythons) {
    const r = spawnSync(p, ["-c", "import torch"], { encoding: "utf8" });
    if (r.status === 0) {
      python = p;
      return null;
    }
    why.push(r.error ? `${p} not found` : `\`${p} -c "import torch"\` failed: ${(r.stderr || "").trim().split("\n").pop()}`);
  }
  return `${why.join("; ")} (Debian: apt-get install -y python3-torch)`;
}

/** ms per step of K SAEs on one batch; throws with PyTorch's error output when the script fails. */
export function torchStep(shape: { d: number; n: number; B: number; K: number; reps: number }): TorchStep {
  const args = [script, "--d", String(shape.d), "--n", String(shape.n), "--batch", String(shape.B), "--k", String(shape.K), "--reps", String(shape.reps)];
  const r = spawnSync(python, args, { encoding: "utf8", maxBuffer: 1 << 20 });
  if (r.status !== 0) throw new Error(`torch_step.py failed (${r.status}): ${(r.stderr || "").trim().slice(-400)}`);
  return JSON.parse(r.stdout.trim().split("\n").pop()!) as TorchStep;
}
