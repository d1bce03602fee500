import { spawnSync } from "node:child_process";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { chromeRobustnessArgs, dawnRobustnessFlags, robustness } from "../../runner/robustness";

describe("SAE_SWARM_ROBUSTNESS", () => {
  it("is off unless set to on, and names itself when set to anything else", () => {
    expect(robustness({})).toBe("off");
    expect(robustness({ SAE_SWARM_ROBUSTNESS: "" })).toBe("off");
    expect(robustness({ SAE_SWARM_ROBUSTNESS: "  " })).toBe("off");
    expect(robustness({ SAE_SWARM_ROBUSTNESS: " ON " })).toBe("on");
    expect(robustness({ SAE_SWARM_ROBUSTNESS: " Off" })).toBe("off");
    expect(() => robustness({ SAE_SWARM_ROBUSTNESS: "1" })).toThrow(/SAE_SWARM_ROBUSTNESS must be "on" or "off", not "1"/);
  });

  it("turns into Dawn's toggle for both backends only when off", () => {
    expect(dawnRobustnessFlags("off")).toEqual(["enable-dawn-features=disable_robustness"]);
    expect(chromeRobustnessArgs("off")).toEqual(["--enable-dawn-features=disable_robustness"]);
    expect(dawnRobustnessFlags("on")).toEqual([]);
    expect(chromeRobustnessArgs("on")).toEqual([]);
  });

  it("the runner refuses a bad value by name before it looks for the server or a GPU", () => {
    const root = path.resolve(__dirname, "../..");
    const r = spawnSync(process.execPath, [path.join(root, "bin/sae-swarm.js"), "runner", "--server", "http://127.0.0.1:9"], {
      cwd: root,
      env: { ...process.env, SAE_SWARM_ROBUSTNESS: "fast" },
      encoding: "utf8",
      timeout: 60_000,
    });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('SAE_SWARM_ROBUSTNESS must be "on" or "off", not "fast"');
    expect(r.stderr).not.toContain("cannot reach the server");
  });
});
