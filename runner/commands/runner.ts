/** `sae-swarm runner`: trains groups from a sae-swarm server on this machine's GPU, in headless Chrome or in Dawn. */
import { describeKernels } from "../../shaders/autotune";
import { hostname } from "node:os";
import { parseArgs } from "node:util";
import { launchProfiles } from "../chrome";
import { WorkerClient } from "../api";
import type { RunnerEvent, StopMode } from "../events";
import { ProgressDisplay, duration } from "../progress";
import { FAULT_ENV, FaultInjector, parseFault } from "../fault";
import type { Lease } from "../../worker/protocol";
import { devVar } from "./server";
import { ALLOW_DATA_HOSTS_ENV, allowedDataHosts } from "../data/allow-hosts";
import { createSafeFetch } from "../data/safe-fetch";
import { detectGpuMemory, GPU_MEMORY_ENV } from "../gpu-memory";
import { BACKEND_ENV, BACKENDS, backendName, type BackendOptions, type RunnerBackend } from "../backends/backend";
import { ChromeBackend } from "../backends/chrome";
import { DawnBackend } from "../backends/dawn";
import { robustness } from "../robustness";

export { describeReport } from "../backends/report";

export const RUNNER_USAGE = `usage: sae-swarm runner --server URL [options]

  --server URL               the sae-swarm Worker (env SAE_SWARM_SERVER; default http://127.0.0.1:8787)
  --token T                  the runner token; better from env SAE_SWARM_RUNNER_TOKEN or RUNNER_TOKEN in ./.dev.vars,
                             which \`ps\` does not show
  --backend NAME             chrome (default): WebGPU in headless Chrome; dawn: WebGPU from Node's \`webgpu\` package
                             (Dawn over Vulkan, no browser; needs libvulkan1), for headless GPU servers (env ${BACKEND_ENV})
  --allow-software-adapter   train even on a software (CPU-emulated) WebGPU adapter such as SwiftShader
  --allow-data-host HOST     read data (shard URLs) from HOST although its address is loopback, private or
                             link-local, which is refused otherwise; repeatable (env ${ALLOW_DATA_HOSTS_ENV}, comma-separated)
  --once                     exit when no group is waiting, instead of polling for more
  --runner-id ID             how this runner names itself to the server (default host-pid)
  --gpu-memory GB            device memory the engine may use, in GB of 10^9 bytes (env ${GPU_MEMORY_ENV};
                             default: 90 % of the free memory nvidia-smi or rocm-smi reports, else 2 GiB)
  --probe                    check the server and the GPU adapter (Chrome: of each launch profile), print them, and exit
  --launch-profile NAME      Chrome only: launch it only this way (env SAE_SWARM_LAUNCH_PROFILE): vulkan, xvfb-vulkan
                             or default; without it, each is tried in that order until one gives a GPU
  -h, --help                 this help

Ctrl-C once: finish the current group, then exit. Twice: checkpoint the group and give it back now.
Three times (or SIGTERM twice): give the lease back and exit at once. SIGTERM: like Ctrl-C twice.
A give-back is not a failure: the group is claimable at once and resumes from its last checkpoint. A stop that
takes longer than SAE_SWARM_STOP_GRACE_MS (default 20000) gives the lease back from here and exits.
Groups that fail here several times in a row make the runner back off, then stop claiming (exit 1).
Chrome: CHROME_PATH, else /usr/bin/chromium. Dawn: SwiftShader's Vulkan driver from Debian's chromium is added to
the system's unless VK_ICD_FILENAMES, VK_DRIVER_FILES or VK_ADD_DRIVER_FILES is set.`;

/** Page restarts allowed within RESTART_WINDOW_MS before the runner gives up (a machine that keeps crashing). */
const MAX_RESTARTS = 5;
const RESTART_WINDOW_MS = 10 * 60_000;

/** How long an abandon (SIGTERM, Ctrl-C twice) may take in the page before the CLI gives the lease back itself. */
const stopGraceMs = () => Number(process.env.SAE_SWARM_STOP_GRACE_MS) || 20_000;

export async function runner(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      server: { type: "string", default: process.env.SAE_SWARM_SERVER ?? "http://127.0.0.1:8787" },
      token: { type: "string", default: process.env.SAE_SWARM_RUNNER_TOKEN },
      "allow-software-adapter": { type: "boolean", default: false },
      "allow-data-host": { type: "string", multiple: true, default: [] },
      once: { type: "boolean", default: false },
      "runner-id": { type: "string", default: `${hostname()}-${process.pid}` },
      probe: { type: "boolean", default: false },
      "gpu-memory": { type: "string" },
      "launch-profile": { type: "string", default: process.env.SAE_SWARM_LAUNCH_PROFILE || undefined },
      backend: { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(RUNNER_USAGE);
    return 0;
  }
  const memory = await detectGpuMemory(values["gpu-memory"]);
  const server = values.server!.replace(/\/$/, "");
  const backendKind = backendName(values.backend);
  if (!backendKind) {
    console.error(`[runner] --backend (or ${BACKEND_ENV}) must be one of ${BACKENDS.join(", ")} (got '${values.backend || process.env[BACKEND_ENV]}')`);
    return 1;
  }
  // SAE_SWARM_ROBUSTNESS (runner/robustness.ts): a bad value stops here, naming the variable, before any backend
  try {
    if (robustness() === "on") console.log("[runner] SAE_SWARM_ROBUSTNESS=on: Dawn clamps every index (slower steps; the default, off, is checked in bounds: see runner/robustness.ts)");
  } catch (e) {
    console.error(`[runner] ${(e as Error).message}`);
    return 1;
  }
  let profiles = launchProfiles();
  if (values["launch-profile"] && backendKind === "chrome") {
    profiles = profiles.filter((p) => p.name === values["launch-profile"]);
    if (!profiles.length) {
      console.error(`[runner] --launch-profile must be one of ${launchProfiles().map((p) => p.name).join(", ")} on this machine (got '${values["launch-profile"]}')`);
      return 1;
    }
  }
  const token = values.token ?? devVar("RUNNER_TOKEN");
  const health = await fetch(`${server}/health`).catch((e) => e as Error);
  if (health instanceof Error || !health.ok) {
    console.error(`[runner] cannot reach the server at ${server}/health: ${health instanceof Error ? health.message : health.status}`);
    return 1;
  }
  console.log(`[runner] server ${server} is healthy`);
  const fault = parseFault(process.env[FAULT_ENV]);
  if (fault) console.log(`[runner] fault injection armed: ${FAULT_ENV}=${fault.spec} (this runner kills itself there)`);

  const allowDataHosts = allowedDataHosts(values["allow-data-host"]);
  if (allowDataHosts.length) console.log(`[runner] data hosts read whatever their address: ${allowDataHosts.join(", ")}`);

  const display = new ProgressDisplay();
  const log = (s: string) => display.log(s);
  // Node's own client: gives a lease back when the page that held it died or did not stop in time.
  const api = new WorkerClient({ server, token, retry: { maxAttempts: 5 } });
  let lease: Lease | null = null;
  let stopMode: StopMode | null = null;
  let backend: RunnerBackend | null = null;
  let signals = 0;
  let hardExit: ((why: string) => void) | null = null;
  const hardExitP = new Promise<{ hard: string }>((r) => (hardExit = (why) => r({ hard: why })));
  let grace: NodeJS.Timeout | null = null;

  const onSignal = (sig: NodeJS.Signals) => {
    signals++;
    const mode: StopMode | "hard" = sig === "SIGINT" ? (signals === 1 ? "drain" : signals === 2 ? "abandon" : "hard") : signals === 1 ? "abandon" : "hard";
    if (mode === "hard") {
      log(`[runner] ${sig}: giving the lease back and exiting now`);
      hardExit?.("runner killed");
      return;
    }
    stopMode = mode;
    log(mode === "drain" ? `[runner] ${sig}: finishing the current group, then exiting (Ctrl-C again to abandon it)` : `[runner] ${sig}: checkpointing the current group and giving it back`);
    // An abandon is bounded: a page stuck in a data fetch or a long eval does not hold the runner up.
    if (mode === "abandon" && !grace) grace = setTimeout(() => hardExit?.("runner stopped (the page did not stop in time)"), stopGraceMs());
    backend?.stop(mode);
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  process.on("SIGHUP", onSignal);

  const onEvent = (e: RunnerEvent) => {
    switch (e.kind) {
      case "claimed":
        lease = e.lease;
        log(`[runner] claimed group ${e.group_id} of sweep ${e.sweep_id}: ${e.runs.length} SAEs, ${e.n_steps} steps${e.resume_step ? `, resuming at step ${e.resume_step}` : ""}${e.attempt > 1 ? ` (attempt ${e.attempt})` : ""}`);
        break;
      case "phase":
        if (e.phase !== "train") display.status(`group ${e.group_id}: ${e.phase}`, true);
        break;
      case "progress":
        display.progress(e);
        break;
      case "done":
        lease = null;
        display.clear();
        log(`[runner] group ${e.group_id}: ${e.outcome}${e.message ? ` — ${e.message}` : ""}`);
        break;
      case "idle":
        display.status(`[runner] no group waiting; next claim in ${duration(e.wait_ms / 1000)}`, true);
        break;
      case "kernels": {
        const r = e.report;
        log(`[runner] matmul kernels for ${r.key} (${r.source === "tuned" ? `tuned in ${(r.tuned_ms / 1000).toFixed(1)} s, ${r.candidates} candidates, ${r.timing} timing` : "cached"}): ${describeKernels(r).join("; ")}`);
        break;
      }
      case "backoff":
        log(`[runner] ${e.failures} group${e.failures > 1 ? "s" : ""} failed here in a row; next claim in ${duration(e.wait_ms / 1000)}`);
        break;
      case "log":
        (e.level === "error" ? console.error : log)(`[page] ${e.message}`);
        break;
      case "device-lost":
      case "exit":
        break;
    }
  };

  const backendOptions: BackendOptions = { server, token, allowSoftware: values["allow-software-adapter"]!, probe: values.probe!, fault: fault && new FaultInjector(fault), allowDataHosts, log };
  backend = backendKind === "dawn" ? new DawnBackend({ ...backendOptions, dataFetch: createSafeFetch({ allowHosts: allowDataHosts }) }) : new ChromeBackend(backendOptions, profiles);
  try {
    const opened = await Promise.race([backend.open(), hardExitP]);
    if (typeof opened === "object") return 130;
    if (!opened) return 2;
    if (values.probe) return 0;
    const restarts: number[] = [];
    for (;;) {
      if (stopMode === "abandon") return 130;
      const outcome = await Promise.race([
        backend
          .session({ runnerId: values["runner-id"]!, once: values.once!, memory, onEvent, log })
          .catch((e: unknown) => (stopMode ? "stopped" : Promise.reject(e))),
        hardExitP,
      ]);
      if (typeof outcome === "object") {
        await giveBack(api, lease, outcome.hard, log);
        return 130;
      }
      if (outcome === "refused") return 2;
      if (outcome === "no-work") return 0;
      if (outcome === "failing") return 1;
      if (outcome === "stopped") {
        await giveBack(api, lease, "runner stopped", log); // only when the loop could not (it normally has)
        return stopMode ? 130 : 0;
      }
      // crashed or device-lost: give the group back at once (a second runner resumes it), then a fresh session.
      await giveBack(api, lease, outcome === "crashed" ? "runner page crashed" : "GPU device lost", log);
      lease = null;
      if (stopMode) return 130;
      const t = Date.now();
      restarts.push(t);
      while (restarts.length && t - restarts[0] > RESTART_WINDOW_MS) restarts.shift();
      if (restarts.length > MAX_RESTARTS) {
        console.error(`[runner] the ${backend.name === "chrome" ? "page" : "GPU device"} failed ${restarts.length} times in ${RESTART_WINDOW_MS / 60_000} minutes; giving up`);
        return 1;
      }
      log(`[runner] ${outcome === "crashed" ? "page crashed" : "GPU device lost"}; restarting the ${backend.name === "chrome" ? "page" : "device"}`);
    }
  } finally {
    if (grace) clearTimeout(grace);
    display.clear();
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    process.off("SIGHUP", onSignal);
    await backend.close();
  }
}

/** Releases the lease this runner still holds (not a failure: the group is claimable at once). */
async function giveBack(api: WorkerClient, lease: Lease | null, why: string, log: (s: string) => void): Promise<void> {
  if (!lease) return;
  await api.release(lease, why).then(
    () => log(`[runner] gave lease ${lease.id} back (${why})`),
    (e) => log(`[runner] could not give lease ${lease.id} back (${(e as Error).message}); it expires on its own`),
  );
}
