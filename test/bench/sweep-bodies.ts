/** The bodies test/bench/sweep-submit.ts times (the heaviest accepted ones, as test/bounds builds them). */
export function sweepBody(kind: "json" | "toml" | "product", salt = ""): { text: string; contentType: string } {
  if (kind === "product") {
    const tags = JSON.stringify(Array.from({ length: 64 }, (_, i) => `${i}`.padEnd(256, "t")));
    const lrs = Array.from({ length: 64 }, (_, i) => (i + 1) * 1e-5).join(",");
    const seeds = Array.from({ length: 64 }, (_, i) => i).join(",");
    const synth = `"data": {"kind": "synthetic", "d_vit": 8, "n_features": 8, "sparsity": 0.1}`;
    return { text: `{${synth}, "n_train": 4096, "batch_size": 64, "tags": ${tags}, "lr": [${lrs}], "seed": [${seeds}]}`, contentType: "application/json" };
  }
  const urls = Array.from({ length: 4096 }, (_, i) => `https://example.com/${salt}${String(i).padEnd(200, "u")}`);
  if (kind === "json") return { text: `{"n_train": 65536, "batch_size": 64, "data": [${urls.map((u) => `{"url": "${u}"}`).join(",")}]}`, contentType: "application/json" };
  return { text: `n_train = 65536\nbatch_size = 64\ndata = [${urls.map((u) => `{url = "${u}"}`).join(",")}]\n`, contentType: "application/toml" };
}
