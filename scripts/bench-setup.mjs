#!/usr/bin/env node
// The setup `npm run bench` needs, and no more: Node and the npm packages. The engine benchmark runs on Node's
// `webgpu` package (Dawn) alone, so a GPU machine without Chrome (or without root for apt) can run it; Dawn needs
// a Vulkan loader (libvulkan1) and a driver: the GPU's own, or SwiftShader's ICD shipped with Debian's chromium.
import { existsSync } from "node:fs";
import { checkNode, ensurePackages } from "./setup.mjs";

checkNode();
ensurePackages();
const loader = ["/usr/lib/x86_64-linux-gnu/libvulkan.so.1", "/usr/lib/aarch64-linux-gnu/libvulkan.so.1", "/usr/lib64/libvulkan.so.1"];
if (!loader.some((p) => existsSync(p))) console.warn("[bench] no Vulkan loader found (libvulkan.so.1): Dawn may find no adapter; install libvulkan1");
