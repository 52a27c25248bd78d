import { profileExtractor } from '../../agents/profile-extractor.js';
import type { RiskAnalysis } from '../../agents/risk-analyzer.js';
import type { StartupProfile } from '../../agents/startup-profile.js';
import { definePipeline, type StepOutputs } from '../pipeline.js';

interface ExtractedProfile {
  startup: StartupProfile;
}

function profileOf(previous: StepOutputs): StartupProfile {
  const profile = previous.profile as ExtractedProfile | undefined;
  if (!profile?.startup) throw new Error('no extracted profile to work from');
  return profile.startup;
}

/**
 * The end of the onboarding wizard: the founder's answers become a profile, the profile a risk analysis,
 * and both a first plan of milestones and tasks. The pipeline's input is exactly the extractor's input.
 */
export const wizardCompletion = definePipeline({
  name: 'wizard_completion',
  description: 'Onboarding wizard answers -> startup profile -> risk analysis -> milestones and tasks.',
  input: profileExtractor.actions.wizard_extract_startup.input,
  steps: [
    {
      id: 'profile',
      agent: 'ProfileExtractor',
      action: 'wizard_extract_startup',
      inputMapper: (_previous, input) => input,
      outputKey: 'profile',
    },
    {
      id: 'risks',
      agent: 'RiskAnalyzer',
      action: 'analyze_risks',
      inputMapper: (previous) => ({ startup: profileOf(previous) }),
      outputKey: 'risks',
    },
    {
      id: 'tasks',
      agent: 'TaskGenerator',
      action: 'wizard_generate_tasks',
      // The plan is still useful without a risk analysis (the action's `risks` is optional).
      inputMapper: (previous) => ({ startup: profileOf(previous), risks: previous.risks as RiskAnalysis | undefined }),
      outputKey: 'tasks',
    },
  ],
});
