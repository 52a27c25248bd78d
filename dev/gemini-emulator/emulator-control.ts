import type { CallRecord } from './emulator-server.js';
import type { EmulatorFault } from './faults.js';
import type { BatchTiming } from './batches.js';
import type { UsageModelOptions } from './usage-model.js';

/** Scripts an emulator that runs in another process, through its `/__emulator/` HTTP routes. */
export interface EmulatorControl {
  script(fault: EmulatorFault | EmulatorFault[]): Promise<void>;
  clearFaults(): Promise<void>;
  calls(): Promise<CallRecord[]>;
  reset(): Promise<void>;
  setStreamChunkDelay(ms: number): Promise<void>;
  /** Moves the emulator's clock forward (batch states and expiry); resolves to the emulator's new time. */
  advanceClock(ms: number): Promise<number>;
  setBatchTiming(t: Partial<BatchTiming>): Promise<void>;
  configureUsage(o: UsageModelOptions): Promise<void>;
}

export function createEmulatorControl(baseUrl: string): EmulatorControl {
  const base = baseUrl.replace(/\/+$/, '');
  const call = async (method: string, path: string, body?: unknown): Promise<unknown> => {
    const res = await fetch(`${base}/__emulator/${path}`, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      // JSON has no Infinity; the emulator reads -1 as "until cleared".
      body: body === undefined ? undefined : JSON.stringify(body, (_k, v) => (v === Infinity ? -1 : v)),
    });
    const json = (await res.json()) as unknown;
    if (!res.ok) throw new Error(`emulator control ${method} ${path} failed with ${res.status}: ${JSON.stringify(json)}`);
    return json;
  };
  return {
    script: async (fault) => void (await call('POST', 'faults', fault)),
    clearFaults: async () => void (await call('DELETE', 'faults')),
    calls: async () => ((await call('GET', 'calls')) as { calls: CallRecord[] }).calls,
    reset: async () => void (await call('POST', 'reset')),
    setStreamChunkDelay: async (ms) => void (await call('POST', 'stream-delay', { ms })),
    advanceClock: async (ms) => ((await call('POST', 'clock', { advanceMs: ms })) as { nowMs: number }).nowMs,
    setBatchTiming: async (t) => void (await call('POST', 'batch-timing', t)),
    configureUsage: async (o) => void (await call('POST', 'usage', o)),
  };
}
