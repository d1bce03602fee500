// The runner page: opens the WebGPU device (adapter limits at their maximum) and reports the adapter to the CLI.
import { requestSaeDevice, type AdapterReport } from "../../shaders/device";

declare global {
  interface Window {
    __runner: { ready: Promise<AdapterReport> };
  }
}

window.__runner = {
  ready: (async () => {
    if (!("gpu" in navigator)) throw new Error("this browser has no WebGPU (navigator.gpu is missing)");
    const { device, report } = await requestSaeDevice(navigator.gpu);
    device.lost.then((info) => console.error(`GPU device lost: ${info.reason}: ${info.message}`));
    return report;
  })(),
};
