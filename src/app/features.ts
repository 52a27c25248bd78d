import { createKnowledgeFeature } from './features/knowledge.js';
import { opsFeature } from './features/ops.js';
import { orchestrationFeature } from './features/orchestration.js';
import type { FeatureFactory } from './runtime.js';
import { streamingFeature } from './features/streaming.js';
import { batchFeature } from './features/batch.js';

/**
 * Every feature the product ships, in the order their routes register. `main.ts` and the test stack both
 * use this list, so what is tested is what runs.
 */
export const defaultFeatures: FeatureFactory[] = [createKnowledgeFeature, orchestrationFeature, opsFeature, streamingFeature(), batchFeature];
