import { z } from 'zod';
import type { AgentResult } from '../core/types.js';

/** A named fan-out: a fixed set of tasks built from a small input, and extra result fields built from theirs. */
export interface FlowPreset<S extends z.ZodType = z.ZodType> {
  name: string;
  input: S;
  tasks(input: z.output<S>): Array<{ agent: string; action: string; input: unknown }>;
  /** Runs in the flows worker when every child has settled; its fields are added to the flow's result. */
  mapResult(results: Record<string, AgentResult>): Record<string, unknown>;
}

const dataOf = (r: AgentResult | undefined) => (r?.success ? r.data : undefined);

/**
 * The founder dashboard in one request. `risks` is the risk panel (`{ topRisks, riskTrend, summary }`),
 * `nextActions` the suggested actions, `pipeline` the deal pipeline summary; each is null (or [] for
 * actions) when its agent failed, and the failure is in `results`.
 */
export const dashboardPreset: FlowPreset = {
  name: 'dashboard',
  input: z.object({ startupId: z.string().min(1).max(100) }).strict(),
  tasks: (input) => {
    const { startupId } = input as { startupId: string };
    return [
      { agent: 'RiskAnalyzer', action: 'dashboard_risk_summary', input: { startupId } },
      { agent: 'TaskGenerator', action: 'suggest_next_actions', input: { startupId, limit: 5 } },
      { agent: 'DealScorer', action: 'pipeline_summary', input: { startupId } },
    ];
  },
  mapResult: (results) => ({
    risks: dataOf(results['RiskAnalyzer:dashboard_risk_summary']) ?? null,
    nextActions: (dataOf(results['TaskGenerator:suggest_next_actions']) as { actions?: unknown[] } | undefined)?.actions ?? [],
    pipeline: dataOf(results['DealScorer:pipeline_summary']) ?? null,
  }),
};

export const defaultPresets: FlowPreset[] = [dashboardPreset];
