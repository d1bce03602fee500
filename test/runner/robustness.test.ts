import { describe, expect, it } from "vitest";
import { chromeRobustnessArgs, dawnRobustnessFlags, robustness } from "../../runner/robustness";

describe("SAE_SWARM_ROBUSTNESS", () => {
  it("is off unless set to on, and names itself when set to anything else", () => {
    expect(robustness({})).toBe("off");
    expect(robustness({ SAE_SWARM_ROBUSTNESS: "" })).toBe("off");
    expect(robustness({ SAE_SWARM_ROBUSTNESS: " ON " })).toBe("on");
    expect(robustness({ SAE_SWARM_ROBUSTNESS: "off" })).toBe("off");
    expect(() => robustness({ SAE_SWARM_ROBUSTNESS: "1" })).toThrow(/SAE_SWARM_ROBUSTNESS must be "on" or "off", not "1"/);
  });

  it("turns into Dawn's toggle for both backends only when off", () => {
    expect(dawnRobustnessFlags("off")).toEqual(["enable-dawn-features=disable_robustness"]);
    expect(chromeRobustnessArgs("off")).toEqual(["--enable-dawn-features=disable_robustness"]);
    expect(dawnRobustnessFlags("on")).toEqual([]);
    expect(chromeRobustnessArgs("on")).toEqual([]);
  });
});
