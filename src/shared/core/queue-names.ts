/** Queue names; every queue shares the configured key prefix (a hash tag such as `{agentq}` for Cluster). */
export const QUEUE = {
  agent: 'agent-jobs',
  flows: 'agent-flows',
  maintenance: 'agent-maintenance',
} as const;

export type QueueName = (typeof QUEUE)[keyof typeof QUEUE];
