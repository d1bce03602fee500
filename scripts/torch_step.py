#!/usr/bin/env python3
"""saev's training step in PyTorch, timed: the yardstick `npm run bench` puts beside the WGSL engine.

K ReLU/Vanilla SAEs (SAE.md: kaiming-uniform init, normalize_w_dec, remove_parallel_grads, Adam with betas
(0.9, 0.999), eps 1e-8) each take one step on the same batch per iteration, as saev's `train` loop does for the
SAEs of one group: normalize W_dec, forward (h = (x − b_dec) W_enc + b_enc, f = relu(h), x̂ = f W_dec + b_dec),
loss = mse + coeff · l1 (l1 = mean_b Σ_j |f|), backward, remove the gradient component parallel to each W_dec row,
Adam. On CUDA when a device is present, in IEEE fp32 (TF32 off); else on the CPU, one thread per usable core.

Usage: torch_step.py --d D --n N --batch B --k K [--reps R] [--warmup W]
Prints one JSON line: {"device", "threads", "ms_per_step", "d", "n", "batch", "k", "reps", "torch"}.
"""
import argparse
import json
import math
import os
import time

import torch


def make_sae(d: int, n: int, device: torch.device) -> dict:
    # kaiming-uniform as torch's default for these shapes (SAE.md): W_enc ~ U(±√(6/d_sae)), W_dec ~ U(±√(6/d_vit))
    w_enc = torch.empty(d, n, device=device).uniform_(-math.sqrt(6 / n), math.sqrt(6 / n))
    w_dec = torch.empty(n, d, device=device).uniform_(-math.sqrt(6 / d), math.sqrt(6 / d))
    params = {
        "W_enc": w_enc.requires_grad_(),
        "b_enc": torch.zeros(n, device=device, requires_grad=True),
        "W_dec": w_dec.requires_grad_(),
        "b_dec": torch.zeros(d, device=device, requires_grad=True),
    }
    opt = torch.optim.Adam(params.values(), lr=4e-4, betas=(0.9, 0.999), eps=1e-8)
    return {"params": params, "opt": opt}


def step(sae: dict, x: torch.Tensor, coeff: float) -> torch.Tensor:
    p = sae["params"]
    with torch.no_grad():  # saev: normalize_w_dec before the forward
        p["W_dec"].div_(p["W_dec"].norm(dim=1, keepdim=True))
    h = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    f = torch.relu(h)
    x_hat = f @ p["W_dec"] + p["b_dec"]
    mse = (x_hat - x).pow(2).mean()
    l1 = f.abs().sum(dim=1).mean()
    loss = mse + coeff * l1
    sae["opt"].zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():  # saev: remove_parallel_grads
        w, g = p["W_dec"], p["W_dec"].grad
        g.sub_((g * w).sum(dim=1, keepdim=True) * w)
    sae["opt"].step()
    return loss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--cpu", action="store_true", help="stay on the CPU even when CUDA is present")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (default: every core this process may use)")
    a = ap.parse_args()
    # Debian's torch may start with 1 thread; give it the machine's cores, as the engine's SwiftShader has them
    torch.set_num_threads(a.threads or len(os.sched_getaffinity(0)))

    cuda = torch.cuda.is_available() and not a.cpu
    device = torch.device("cuda" if cuda else "cpu")
    # IEEE fp32 on GPUs, as the WGSL engine computes
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    saes = [make_sae(a.d, a.n, device) for _ in range(a.k)]
    x = torch.randn(a.batch, a.d, device=device)

    def run(iters: int) -> None:
        for _ in range(iters):
            for sae in saes:
                step(sae, x, 4e-4)
        if cuda:
            torch.cuda.synchronize()

    run(a.warmup)
    t0 = time.perf_counter()
    run(a.reps)
    ms = (time.perf_counter() - t0) * 1000 / a.reps
    print(json.dumps({
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "threads": torch.get_num_threads(),
        "ms_per_step": ms,
        "d": a.d, "n": a.n, "batch": a.batch, "k": a.k, "reps": a.reps,
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
