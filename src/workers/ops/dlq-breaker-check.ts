import type { AgentRegistry } from '../../shared/agents/registry.js';
import type { Config } from '../../shared/core/config.js';
import type { BreakerSnapshot } from '../../shared/limits/circuit-breaker.js';
import type { DlqEntry } from '../../shared/ops/dlq-store.js';

/**
 * "Would a retry of this entry just hit an open breaker?" The models it could run on are its own, else
 * its route's primary and fallback, else its action's tier; it is blocked only when every one of them is
 * open (or half-open with a probe already out). Breaker keys follow the guards: `gemini:<model>`.
 */
export function createBreakerCheck(deps: {
  cfg: Pick<Config, 'AGENT_ROUTES' | 'GEMINI_MODEL_FAST' | 'GEMINI_MODEL_PRO'>;
  registry: Pick<AgentRegistry, 'resolve'>;
  state: (key: string) => Promise<Pick<BreakerSnapshot, 'state' | 'probeInFlight'>>;
}) {
  const { cfg } = deps;

  function modelsOf(e: Pick<DlqEntry, 'agent' | 'action' | 'model'>): string[] {
    if (e.model) return [e.model];
    const route = cfg.AGENT_ROUTES[`${e.agent}:${e.action}`] ?? cfg.AGENT_ROUTES[e.agent];
    if (route) return route.fallback ? [route.primary, route.fallback] : [route.primary];
    try {
      return [deps.registry.resolve(e.agent, e.action).action.model === 'pro' ? cfg.GEMINI_MODEL_PRO : cfg.GEMINI_MODEL_FAST];
    } catch {
      return [];
    }
  }

  return {
    modelsOf,
    async blocked(e: Pick<DlqEntry, 'agent' | 'action' | 'model'>): Promise<boolean> {
      const models = modelsOf(e);
      if (models.length === 0) return false;
      const states = await Promise.all(models.map((m) => deps.state(`gemini:${m}`)));
      return states.every((s) => s.state === 'open' || s.probeInFlight);
    },
  };
}
