/** A request Gemini refuses with 400 INVALID_ARGUMENT; the emulator answers it so, whichever part found it. */
export class BadRequestError extends Error {
  readonly status = 400;
}
