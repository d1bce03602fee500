// Bundled into the test page: opens the WebGPU device once and exposes the cases to page.evaluate.
import { requestSaeDevice } from "../../shaders/device";
import { cases } from "./cases";

declare global {
  interface Window {
    __gpu: Promise<{ report: unknown; run(name: string, input: unknown): Promise<unknown> }>;
  }
}

window.__gpu = (async () => {
  const { device, report } = await requestSaeDevice(navigator.gpu);
  device.lost.then((info) => console.error(`GPU device lost: ${info.reason} ${info.message}`));
  return {
    report,
    async run(name: string, input: unknown) {
      const fn = cases[name];
      if (!fn) throw new Error(`no GPU case named ${name}`);
      return fn(device, input);
    },
  };
})();
