import { describe, expect, it } from "vitest";
import {
  decodeCheckpoint,
  decodeSafetensors,
  encodeFinalCheckpoint,
  encodeResumeCheckpoint,
  encodeSafetensors,
  tensor,
  type SaeWeights,
} from "../../runner/safetensors";
import { checkCheckpointHeader } from "../../worker/checkpoint-check";
import { mulberry32, testSeed } from "../helpers/random";
import { trainConfig } from "./fixtures";

const seed = testSeed();
const rand = mulberry32(seed);
const randF32 = (n: number) => Float32Array.from({ length: n }, () => rand() * 2 - 1);

function weights(d: number, k: number, jump: boolean): SaeWeights {
  const w: SaeWeights = { W_enc: randF32(d * k), b_enc: randF32(k), W_dec: randF32(k * d), b_dec: randF32(d) };
  if (jump) w.threshold = randF32(k);
  return w;
}

describe(`safetensors (TEST_SEED=${seed})`, () => {
  it("writes the reference library's bytes for its own test tensor", () => {
    // safetensors' Python test serializes {"test": zeros((2, 2), int32)}: a 60-byte header padded to 64 ('@').
    const bytes = encodeSafetensors({ test: tensor(new Int32Array(4), [2, 2]) });
    const header = '{"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}}    ';
    const expected = new Uint8Array([0x40, 0, 0, 0, 0, 0, 0, 0, ...new TextEncoder().encode(header), ...new Array(16).fill(0)]);
    expect(Array.from(bytes)).toEqual(Array.from(expected));
  });

  it("lays out header, metadata, alignment padding and little-endian data byte by byte", () => {
    const bytes = encodeSafetensors(
      { b: tensor(new Float32Array([1, -2]), [2]), a: tensor(new BigInt64Array([3n]), []) },
      { k: "v" },
    );
    const json = '{"__metadata__":{"k":"v"},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"I64","shape":[],"data_offsets":[8,16]}}';
    const padded = Math.ceil(json.length / 8) * 8;
    expect(bytes.length).toBe(8 + padded + 16);
    const n = new DataView(bytes.buffer).getBigUint64(0, true);
    expect(Number(n)).toBe(padded);
    expect(padded % 8).toBe(0);
    expect(new TextDecoder().decode(bytes.subarray(8, 8 + padded))).toBe(json + " ".repeat(padded - json.length));
    // 1.0f = 0x3f800000, -2.0f = 0xc0000000, 3 as i64, all little-endian
    expect(Array.from(bytes.subarray(8 + padded))).toEqual([0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0, 3, 0, 0, 0, 0, 0, 0, 0]);
  });

  it("round-trips F32, F64, I32, I64 and U8 tensors and metadata", () => {
    const t = {
      f32: tensor(randF32(12), [3, 4]),
      f64: tensor(Float64Array.from({ length: 5 }, () => rand()), [5]),
      i32: tensor(Int32Array.from([-1, 2, 2 ** 31 - 1]), [3]),
      i64: tensor(BigInt64Array.from([-(2n ** 62n), 7n]), [2, 1]),
      u8: tensor(Uint8Array.from([1, 2, 255]), [3]),
      empty: tensor(new Float32Array(0), [0, 4]),
    };
    const back = decodeSafetensors(encodeSafetensors(t, { hello: "wörld", n: "3" }));
    expect(back.metadata).toEqual({ hello: "wörld", n: "3" });
    for (const [name, x] of Object.entries(t)) {
      expect(back.tensors[name].dtype).toBe(x.dtype);
      expect(back.tensors[name].shape).toEqual(x.shape);
      expect(Array.from(back.tensors[name].data as ArrayLike<unknown>)).toEqual(Array.from(x.data as ArrayLike<unknown>));
    }
  });

  it("rejects malformed files with a reason", () => {
    const good = encodeSafetensors({ x: tensor(new Float32Array([1, 2]), [2]) });
    expect(() => decodeSafetensors(good.subarray(0, 5))).toThrow(/shorter/);
    expect(() => decodeSafetensors(good.subarray(0, good.length - 1))).toThrow(/cover 8 bytes but the data is 7/);
    const bad = good.slice();
    bad[0] = 0xff;
    expect(() => decodeSafetensors(bad)).toThrow(/header length/);
    const wrongShape = encodeSafetensors({ x: { dtype: "F32", shape: [2], data: new Float32Array(2) } });
    const text = new TextDecoder().decode(wrongShape).replace('"shape":[2]', '"shape":[3]');
    expect(() => decodeSafetensors(new TextEncoder().encode(text))).toThrow(/offsets span 8 bytes/);
    expect(() => tensor(new Float32Array(3), [2, 2])).toThrow(/holds 4 elements/);
  });

  for (const kind of ["relu", "jumprelu"] as const) {
    it(`writes and reads ${kind} final and resume checkpoints with SAELens names and shapes`, () => {
      const cfg = trainConfig({ d_vit: 8, exp_factor: 4, kind });
      const d = 8, k = 32;
      const w = weights(d, k, kind === "jumprelu");
      const norm = { mean: randF32(d), scale: 1.75 };
      const final = encodeFinalCheckpoint({ run_id: "run-1", cfg, step: 16 }, w, norm);
      const raw = decodeSafetensors(final);
      const names = ["W_enc", "b_enc", "W_dec", "b_dec", ...(kind === "jumprelu" ? ["threshold"] : []), "norm_mean", "norm_scale"];
      expect(Object.keys(raw.tensors).sort()).toEqual(names.sort());
      expect(raw.tensors.W_enc.shape).toEqual([d, k]);
      expect(raw.tensors.W_dec.shape).toEqual([k, d]);
      expect(raw.tensors.b_enc.shape).toEqual([k]);
      expect(raw.tensors.b_dec.shape).toEqual([d]);
      expect(raw.tensors.norm_scale.shape).toEqual([]);
      expect(JSON.parse(raw.metadata.cfg)).toMatchObject({ architecture: kind === "jumprelu" ? "jumprelu" : "standard", d_in: d, d_sae: k });
      expect(JSON.parse(raw.metadata.config)).toEqual(cfg);

      const f = decodeCheckpoint(final);
      expect(f.kind).toBe("final");
      expect(f.adam).toBeUndefined();
      expect(f.weights.W_enc).toEqual(w.W_enc);
      expect(f.weights.W_dec).toEqual(w.W_dec);
      expect(f.weights.threshold).toEqual(w.threshold);
      expect(f.norm.mean).toEqual(norm.mean);
      expect(f.norm.scale).toBe(1.75);

      const m = weights(d, k, kind === "jumprelu");
      const v = weights(d, k, kind === "jumprelu");
      const resume = encodeResumeCheckpoint({ run_id: "run-1", cfg, step: 16 }, w, norm, { m, v, step: 16 });
      const r = decodeCheckpoint(resume);
      expect(r.kind).toBe("resume");
      expect(r.step).toBe(16);
      expect(r.adam!.step).toBe(16);
      expect(r.adam!.m.W_enc).toEqual(m.W_enc);
      expect(r.adam!.v.b_dec).toEqual(v.b_dec);
      expect(r.adam!.v.threshold).toEqual(v.threshold);
      expect(decodeSafetensors(resume).tensors.step).toMatchObject({ dtype: "I64", shape: [] });
    });
  }

  it("BatchTopK checkpoints carry θ as threshold [d_sae] (SAELens's jumprelu layout); the Worker's strict check requires it", () => {
    const base = trainConfig({ d_vit: 8, exp_factor: 4 });
    const cfg = { ...base, sae: { ...base.sae, kind: "batchtopk" as const, k: 4 } };
    const d = 8, k = 32;
    const w = { ...weights(d, k, false), threshold: new Float32Array(k).fill(0.375) };
    const norm = { mean: randF32(d), scale: 1.5 };
    const final = encodeFinalCheckpoint({ run_id: "run-b", cfg, step: 16 }, w, norm);
    const raw = decodeSafetensors(final);
    expect(raw.tensors.threshold.shape).toEqual([k]);
    expect(JSON.parse(raw.metadata.cfg)).toMatchObject({ architecture: "jumprelu", d_in: d, d_sae: k });
    expect(decodeCheckpoint(final).weights.threshold).toEqual(w.threshold);
    // AuxK (aux_coeff defaults to 1/32): the dead counters travel as aux_counters, I64 [d_sae], every u32 exact
    const counters = Uint32Array.from({ length: k }, (_, j) => (j === 3 ? 0xffffffff : j * 1000));
    const adam = { m: { ...w, threshold: new Float32Array(k) }, v: { ...w, threshold: new Float32Array(k) }, step: 16 };
    const resume = encodeResumeCheckpoint({ run_id: "run-b", cfg, step: 16 }, w, norm, { ...adam, counters });
    expect(decodeCheckpoint(resume).weights.threshold).toEqual(w.threshold);
    expect(decodeCheckpoint(resume).adam!.counters).toEqual(counters);
    expect(decodeSafetensors(resume).tensors.aux_counters).toMatchObject({ dtype: "I64", shape: [k] });
    expect(() => encodeResumeCheckpoint({ run_id: "run-b", cfg, step: 16 }, w, norm, adam)).toThrow(/aux_counters/);
    const noAux = { ...cfg, sae: { ...cfg.sae, aux_coeff: 0 } };
    const withoutCounters = encodeResumeCheckpoint({ run_id: "run-b", cfg: noAux, step: 16 }, w, norm, adam);
    expect(decodeSafetensors(withoutCounters).tensors.aux_counters).toBeUndefined();
    const target = (kind: "final" | "resume") => ({ runId: "run-b", cfg, kind, step: 16 });
    expect(checkCheckpointHeader(final, final.byteLength, target("final"))).toBe(final.byteLength);
    expect(checkCheckpointHeader(resume, resume.byteLength, target("resume"))).toBe(resume.byteLength);
    // the Worker refuses an AuxK run's resume checkpoint without its counters, naming the tensor
    expect(() => checkCheckpointHeader(withoutCounters, withoutCounters.byteLength, target("resume"))).toThrow(/aux_counters/);
    // without θ: the encoder refuses, and a file without it (as a ReLU's) is refused by the Worker, naming the tensor
    expect(() => encodeFinalCheckpoint({ run_id: "run-b", cfg, step: 16 }, weights(d, k, false), norm)).toThrow(/batchtopk SAE needs 'threshold'/);
    const noTheta = encodeFinalCheckpoint({ run_id: "run-b", cfg: base, step: 16 }, weights(d, k, false), norm);
    expect(() => checkCheckpointHeader(noTheta, noTheta.byteLength, target("final"))).toThrow(/threshold/);
    // TopK: SAELens's "topk" with k, no threshold
    const topk = { ...base, sae: { ...base.sae, kind: "topk" as const, k: 4 } };
    const t = decodeSafetensors(encodeFinalCheckpoint({ run_id: "run-t", cfg: topk, step: 16 }, weights(d, k, false), norm));
    expect(JSON.parse(t.metadata.cfg)).toMatchObject({ architecture: "topk", k: 4 });
    expect(t.tensors.threshold).toBeUndefined();
  });

  it("records the data's origin (layer, vit_ckpt) in a final checkpoint's metadata when given", () => {
    const origin = { layer: 11, vit_ckpt: "hf-hub:timm/vit", vit_family: "clip" };
    const bytes = encodeFinalCheckpoint({ run_id: "r", cfg: trainConfig(), step: 1, data_origin: origin }, weights(8, 32, false), { mean: randF32(8), scale: 1 });
    expect(JSON.parse(decodeSafetensors(bytes).metadata.data_origin)).toEqual(origin);
    expect(decodeSafetensors(encodeFinalCheckpoint({ run_id: "r", cfg: trainConfig(), step: 1 }, weights(8, 32, false), { mean: randF32(8), scale: 1 })).metadata.data_origin).toBeUndefined();
  });

  it("refuses a JumpReLU checkpoint without threshold and mismatched shapes", () => {
    const cfg = trainConfig({ kind: "jumprelu" });
    expect(() => encodeFinalCheckpoint({ run_id: "r", cfg, step: 1 }, weights(8, 32, false), { mean: randF32(8), scale: 1 })).toThrow(/threshold/);
    expect(() => encodeFinalCheckpoint({ run_id: "r", cfg: trainConfig(), step: 1 }, weights(8, 16, false), { mean: randF32(8), scale: 1 })).toThrow(/W_enc|holds/);
  });
});
