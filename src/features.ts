import { createKnowledgeFeature } from './producers/knowledge-feature.js';
import { opsFeature } from './ops/ops-feature.js';
import { orchestrationFeature } from './orchestration/feature.js';
import type { FeatureFactory } from './runtime.js';
import { streamingFeature } from './shared/stream/feature.js';

/**
 * Every feature the product ships, in the order their routes register. `main.ts` and the test stack both
 * use this list, so what is tested is what runs.
 */
export const defaultFeatures: FeatureFactory[] = [createKnowledgeFeature, orchestrationFeature, opsFeature, streamingFeature()];
