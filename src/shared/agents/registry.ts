import { z } from 'zod';
import { ValidationError } from '../core/errors.js';
import type { AgentAction, AgentDefinition, ModelTier } from './define-agent.js';
import { dealScorer } from './deal-scorer.js';
import { knowledgeAssistant } from './knowledge-assistant.js';
import { profileExtractor } from './profile-extractor.js';
import { riskAnalyzer } from './risk-analyzer.js';
import { taskGenerator } from './task-generator.js';
import { unknownFields } from './unknown-fields.js';
import { closeInputSchema } from './closed-schema.js';

/** Keyed by agent name, with literal types: the typed client infers inputs and outputs from it. */
export const builtInAgentsByName = {
  RiskAnalyzer: riskAnalyzer,
  TaskGenerator: taskGenerator,
  DealScorer: dealScorer,
  ProfileExtractor: profileExtractor,
  KnowledgeAssistant: knowledgeAssistant,
} as const;

export const builtInAgents: AgentDefinition[] = Object.values(builtInAgentsByName);

/** A map of agent name to definition; `BuiltInAgents` is the one agentq ships. */
export type AgentMap = Record<string, AgentDefinition>;
export type BuiltInAgents = typeof builtInAgentsByName;

export type AgentName<M extends AgentMap = BuiltInAgents> = keyof M & string;
export type ActionName<M extends AgentMap, N extends AgentName<M>> = keyof M[N]['actions'] & string;
type ActionOf<M extends AgentMap, N extends AgentName<M>, Act extends ActionName<M, N>> = M[N]['actions'][Act];
/** What a caller sends: fields with defaults are optional here. */
export type AgentInput<M extends AgentMap, N extends AgentName<M>, Act extends ActionName<M, N>> = z.input<ActionOf<M, N, Act>['input']>;
/** What a job's `result.data` holds. */
export type AgentOutput<M extends AgentMap, N extends AgentName<M>, Act extends ActionName<M, N>> = z.output<ActionOf<M, N, Act>['output']>;

export type JsonSchema = Record<string, unknown>;

export interface ActionInfo {
  name: string;
  description: string;
  model: ModelTier;
  promptVersion: number;
  inputSchema: JsonSchema;
  outputSchema: JsonSchema;
}

export interface AgentInfo {
  name: string;
  description: string;
  actions: ActionInfo[];
}

export interface AgentRegistry {
  register(agent: AgentDefinition): void;
  get(name: string): AgentDefinition | undefined;
  resolve(agent: string, action: string): { agent: AgentDefinition; action: AgentAction };
  /** Parsed input (defaults applied); a ValidationError with `input.`-prefixed paths otherwise. */
  validateInput(agent: string, action: string, input: unknown): unknown;
  /** JSON Schemas of one action: `output` is what the worker sends as Gemini's `responseJsonSchema`. */
  schemas(agent: string, action: string): { input: JsonSchema; output: JsonSchema };
  list(): AgentInfo[];
  /** The agents with an action whose prompt searches `table` (`knowledge`): an ingest into it invalidates their answers. */
  readersOf(table: string): string[];
}

const quoteList = (names: string[]) => names.map((n) => `"${n}"`).join(', ');

function issuePath(path: PropertyKey[]): string {
  return ['input', ...path.map(String)].join('.');
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object') {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}

/**
 * Input schemas are shown as callers send them (`io: 'input'`: defaulted fields optional; objects closed with
 * `additionalProperties: false` as the API enforces, except `passthrough` ones); output schemas as
 * the model must produce them, without `$schema`, which Gemini's schema fields have rejected. Converted once
 * per action and shared (hence frozen): the worker asks for the output schema on every call.
 */
function toSchemas(action: AgentAction) {
  const { $schema: _drop, ...output } = z.toJSONSchema(action.output, { io: 'output' }) as JsonSchema;
  const input = closeInputSchema(z.toJSONSchema(action.input, { io: 'input' }) as JsonSchema, action.passthrough);
  return deepFreeze({ input, output });
}

export function createAgentRegistry(agents: AgentDefinition[] = []): AgentRegistry {
  const byName = new Map<string, AgentDefinition>();
  const schemaCache = new Map<AgentAction, { input: JsonSchema; output: JsonSchema }>();

  function schemasOf(action: AgentAction) {
    let s = schemaCache.get(action);
    if (!s) {
      s = toSchemas(action);
      schemaCache.set(action, s);
    }
    return s;
  }

  function resolve(agentName: string, actionName: string): { agent: AgentDefinition; action: AgentAction } {
    const agent = byName.get(agentName);
    if (!agent) {
      throw new ValidationError(`unknown agent "${agentName}"; valid agents: ${quoteList([...byName.keys()])}`, [
        { path: 'agent', message: `unknown agent; valid: ${[...byName.keys()].join(', ')}` },
      ]);
    }
    const action = Object.hasOwn(agent.actions, actionName) ? agent.actions[actionName] : undefined;
    if (!action) {
      const valid = Object.keys(agent.actions);
      throw new ValidationError(`unknown action "${actionName}" of agent "${agentName}"; valid actions: ${quoteList(valid)}`, [
        { path: 'action', message: `unknown action; valid: ${valid.join(', ')}` },
      ]);
    }
    return { agent, action };
  }

  const registry: AgentRegistry = {
    register(agent) {
      if (byName.has(agent.name)) throw new Error(`agent "${agent.name}" is already registered`);
      // Converting now makes a schema JSON Schema cannot express fail at startup, not on the first job.
      for (const action of Object.values(agent.actions)) schemasOf(action);
      byName.set(agent.name, agent);
    },

    get: (name) => byName.get(name),

    resolve,

    validateInput(agentName, actionName, input) {
      const { action } = resolve(agentName, actionName);
      const parsed = action.input.safeParse(input);
      if (parsed.success) {
        const unknown = unknownFields(input, parsed.data, action.passthrough);
        if (unknown.length === 0) return parsed.data;
        throw new ValidationError(
          `invalid input for ${agentName}.${actionName}: unknown field${unknown.length > 1 ? 's' : ''} ${unknown.map((p) => `input.${p}`).join(', ')}`,
          unknown.map((p) => ({ path: `input.${p}`, message: `unknown field "${p.split('.').pop()}"` })),
        );
      }
      throw new ValidationError(
        `invalid input for ${agentName}.${actionName}`,
        parsed.error.issues.map((issue) => ({ path: issuePath(issue.path), message: issue.message })),
      );
    },

    schemas(agentName, actionName) {
      return schemasOf(resolve(agentName, actionName).action);
    },

    readersOf(table) {
      return [...byName.values()].filter((agent) => Object.values(agent.actions).some((a) => a.knowledge?.includes(table))).map((agent) => agent.name);
    },

    list() {
      return [...byName.values()].map((agent) => ({
        name: agent.name,
        description: agent.description,
        actions: Object.entries(agent.actions).map(([name, action]) => {
          const s = schemasOf(action);
          return {
            name,
            description: action.description,
            model: action.model,
            promptVersion: action.promptVersion,
            inputSchema: s.input,
            outputSchema: s.output,
          };
        }),
      }));
    },
  };

  for (const agent of agents) registry.register(agent);
  return registry;
}

/** A registry of the built-in agents. A new one per call: registries are mutable (`register`). */
export function defaultRegistry(): AgentRegistry {
  return createAgentRegistry(builtInAgents);
}
