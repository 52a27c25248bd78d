import { isProModel } from '../limits/model-limits.js';

/** Limits of one org. A limit <= 0 or missing means unlimited; a missing field falls back to the defaults. */
export interface FairPlan {
  /** Share of dispatches relative to other orgs (> 0). */
  weight?: number;
  /** Most jobs of the org in flight (BullMQ wait + active) at once. */
  concurrency?: number;
  /** Requests per minute per model, by model tier. */
  rpm?: { pro?: number; flash?: number };
  /** Estimated tokens per minute per model. */
  tpm?: number;
}

export interface FairDefaults {
  weight: number;
  concurrency: number;
  rpm: { pro: number; flash: number };
  tpm: number;
}

export type ModelTier = 'pro' | 'flash';

/**
 * Suffix of a model's batch lane: batch-tier jobs wait there, limited by their org's weight and concurrency
 * but by none of the online RPM/TPM buckets (Gemini's Batch Mode has quotas of its own). fair-core-N.lua
 * recognises it by the same suffix (BATCH_LANE).
 */
export const BATCH_LANE_SUFFIX = '@batch';
export const batchLane = (model: string) => `${model}${BATCH_LANE_SUFFIX}`;
export const isBatchLane = (model: string) => model.endsWith(BATCH_LANE_SUFFIX);

/** The rpm tier of a model: `pro` if its name contains "pro" in any case, else `flash` (model-limits.ts isProModel). */
export const tierOf = (model: string): ModelTier => (isProModel(model) ? 'pro' : 'flash');

/** Plan hash fields, in the order fair-core-N.lua's `plan` op takes them ('' = use the default). */
export function planFields(plan: FairPlan): string[] {
  if (plan.weight !== undefined && !(plan.weight > 0)) throw new RangeError(`weight must be > 0, got ${plan.weight}`);
  const s = (v: number | undefined) => (v === undefined ? '' : String(v));
  return [s(plan.weight), s(plan.concurrency), s(plan.rpm?.pro), s(plan.rpm?.flash), s(plan.tpm)];
}

/** Reads a plan hash back (fields absent from the hash stay absent). */
export function planFromHash(h: Record<string, string>): FairPlan {
  const n = (k: string) => (h[k] === undefined ? undefined : Number(h[k]));
  const plan: FairPlan = {};
  if (n('weight') !== undefined) plan.weight = n('weight');
  if (n('concurrency') !== undefined) plan.concurrency = n('concurrency');
  if (n('rpmPro') !== undefined || n('rpmFlash') !== undefined) {
    plan.rpm = {};
    if (n('rpmPro') !== undefined) plan.rpm.pro = n('rpmPro');
    if (n('rpmFlash') !== undefined) plan.rpm.flash = n('rpmFlash');
  }
  if (n('tpm') !== undefined) plan.tpm = n('tpm');
  return plan;
}

/** The plan in force: stored fields over the defaults. */
export function effectivePlan(stored: FairPlan, d: FairDefaults): Required<FairPlan> & { rpm: { pro: number; flash: number } } {
  return {
    weight: stored.weight ?? d.weight,
    concurrency: stored.concurrency ?? d.concurrency,
    rpm: { pro: stored.rpm?.pro ?? d.rpm.pro, flash: stored.rpm?.flash ?? d.rpm.flash },
    tpm: stored.tpm ?? d.tpm,
  };
}
