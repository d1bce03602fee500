/**
 * The Dawn device the one-process bench scripts (steps.ts, fusion.ts, tune-table.ts) time on: the `webgpu` package
 * on SwiftShader's Vulkan ICD where no NVIDIA device is present, timestamp quantization off (so stamps are exact),
 * and the runner's robustness setting (SAE_SWARM_ROBUSTNESS), so the kernels run as a runner runs them.
 */
import { existsSync } from "node:fs";
import { requestSaeDevice } from "../../shaders/device";
import { dawnRobustnessFlags } from "../../runner/robustness";

// the `webgpu` package's instance must outlive its devices: collected, it takes Dawn down with it (an abort in a
// mutex on the next submit), so the module keeps it
let instance: GPU | undefined;

export async function benchDevice(): Promise<Awaited<ReturnType<typeof requestSaeDevice>>> {
  const ICD = "/usr/lib/chromium/vk_swiftshader_icd.json";
  if (!process.env.VK_ICD_FILENAMES && existsSync(ICD) && !existsSync("/dev/nvidia0")) process.env.VK_ICD_FILENAMES = ICD;
  const { create, globals } = await import("webgpu");
  Object.assign(globalThis, globals);
  instance = create(["disable-dawn-features=timestamp_quantization", ...dawnRobustnessFlags()]);
  const out = await requestSaeDevice(instance);
  out.device.addEventListener("uncapturederror", (e) => console.error("WebGPU error:", (e as GPUUncapturedErrorEvent).error.message));
  return out;
}

/** The CPU time (ms) of this process while one dispatch runs alone in a submit of its own: on a software adapter the
 *  kernel's own cost, less sensitive to other processes' load than wall time. */
export async function dispatchCpuMs(device: GPUDevice, pipeline: GPUComputePipeline, bind: GPUBindGroup, size: [number, number, number]): Promise<number> {
  const e = device.createCommandEncoder();
  const pass = e.beginComputePass();
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, bind);
  pass.dispatchWorkgroups(...size);
  pass.end();
  const c0 = process.cpuUsage();
  device.queue.submit([e.finish()]);
  await device.queue.onSubmittedWorkDone();
  const u = process.cpuUsage(c0);
  return (u.user + u.system) / 1e3;
}
