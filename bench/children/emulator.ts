/**
 * The Gemini emulator in its own process, as a real upstream would be: its CPU does not land on the
 * event loop of the worker being measured. Controlled over HTTP (`/__emulator/*`).
 */
import { startGeminiEmulator } from '../../dev/gemini-emulator/emulator.js';
import { serveParent, toParent } from '../lib/child.js';

const emulator = await startGeminiEmulator({ host: '127.0.0.1' });
serveParent(async () => ({}));
process.on('SIGTERM', () => void emulator.close().then(() => process.exit(0)));
toParent({ ready: { url: emulator.url } });
