// vitest globalSetup (runs in Node, outside workerd): starts the W&B stand-in (test/wandb/standin.ts) on a free
// port, so Worker tests reach it over real HTTP from inside workerd; its URL is provided as `wandbStandinUrl`.
import type { TestProject } from "vitest/node";
import { WandbStandin } from "../wandb/standin";

export const STANDIN_KEY = "worker-suite-wandb-key";

export default async function setup(project: TestProject) {
  const standin = await WandbStandin.start({ apiKey: STANDIN_KEY, defaultEntity: "swarm" });
  project.provide("wandbStandinUrl", standin.url);
  return () => standin.close();
}

declare module "vitest" {
  export interface ProvidedContext {
    wandbStandinUrl: string;
  }
}
