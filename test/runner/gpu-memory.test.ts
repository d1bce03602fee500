/**
 * The runner's memory budget (runner/gpu-memory.ts): flag, then SAE_SWARM_GPU_MEMORY, then nvidia-smi / rocm-smi
 * (their real output formats), then the default; a tool that is absent or fails is skipped.
 */
import { describe, expect, it } from "vitest";
import { DEFAULT_MEMORY_BUDGET } from "../../shaders/fit";
import { detectGpuMemory, parseGigabytes, parseNvidiaSmi, parseRocmSmi, runTool, SMI_SHARE, type RunTool } from "../../runner/gpu-memory";

// nvidia-smi --query-gpu=memory.total,memory.used --format=csv,noheader,nounits on a two-GPU machine
const NVIDIA = "81559, 1024\n24564, 4\n";
// rocm-smi --showmeminfo vram --json (ROCm 6)
const ROCM = JSON.stringify({ card0: { "VRAM Total Memory (B)": "68702699520", "VRAM Total Used Memory (B)": "10960896" } });

/** Answers from a table of (tool → stdout), null for a tool not installed. */
const tools = (t: Record<string, string>): RunTool => async (cmd) => t[cmd] ?? null;

describe("GPU memory budget", () => {
  it("parses the tools' output: the smallest GPU's free memory", () => {
    expect(parseNvidiaSmi(NVIDIA)).toBe((24564 - 4) * 2 ** 20);
    expect(parseNvidiaSmi("")).toBeNull();
    expect(parseNvidiaSmi("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")).toBeNull();
    expect(parseRocmSmi(ROCM)).toBe(68702699520 - 10960896);
    expect(parseRocmSmi("not json")).toBeNull();
    expect(parseRocmSmi("{}")).toBeNull();
  });

  it("takes the flag, then the environment, then nvidia-smi, then rocm-smi, then the default", async () => {
    const both = tools({ "nvidia-smi": NVIDIA, "rocm-smi": ROCM });
    expect(await detectGpuMemory("80", { SAE_SWARM_GPU_MEMORY: "24" }, both)).toEqual({ bytes: 80e9, source: "flag" });
    expect(await detectGpuMemory(undefined, { SAE_SWARM_GPU_MEMORY: "24.5" }, both)).toEqual({ bytes: 24.5e9, source: "env" });
    expect(await detectGpuMemory(undefined, {}, both)).toEqual({ bytes: Math.floor(SMI_SHARE * (24564 - 4) * 2 ** 20), source: "nvidia-smi" });
    expect(await detectGpuMemory(undefined, {}, tools({ "nvidia-smi": "garbage", "rocm-smi": ROCM }))).toEqual({ bytes: Math.floor(SMI_SHARE * (68702699520 - 10960896)), source: "rocm-smi" });
    expect(await detectGpuMemory(undefined, {}, tools({}))).toEqual({ bytes: DEFAULT_MEMORY_BUDGET, source: "default" });
  });

  it("refuses a budget that is not a positive number, naming where it came from", async () => {
    expect(() => parseGigabytes("0", "--gpu-memory")).toThrow(/--gpu-memory must be a positive number of GB/);
    await expect(detectGpuMemory(undefined, { SAE_SWARM_GPU_MEMORY: "eighty" }, tools({}))).rejects.toThrow(/SAE_SWARM_GPU_MEMORY must be a positive number/);
  });

  it("a tool that is not installed answers null instead of failing", async () => {
    expect(await runTool("sae-swarm-no-such-tool", ["--version"])).toBeNull();
    expect(await runTool(process.execPath, ["-e", "process.stdout.write('81559, 3')"])).toBe("81559, 3");
  });
});
