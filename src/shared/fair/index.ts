export { createFairScheduler, type DispatchingWorker, type FairScheduler, type FairSchedulerOptions, type FairEntry, type WhyResult, type WaitReason, type DispatchResult } from './fair-scheduler.js';
export { createDispatchLoop, type DispatchLoop } from './dispatch-loop.js';
export { createBufferAsk, createSharedBufferAsk, type BufferAsk, type SharedBufferAsk } from './buffer-ask.js';
export { PARK_AT_MS, PARK_SCORE_MIN, isParked, parkedState, parkedJobFields, parkedJobOptions, parkActiveJob, type ParkedJobFields } from './park.js';
export { batchLane, isBatchLane, tierOf, type FairPlan, type FairDefaults } from './fair-plan.js';
export { fairKeys, type FairKeys } from './fair-keys.js';
export type { CancelTarget, ClaimAppend, ClaimLookup, ChargeCorrection } from './fair-lua.js';
