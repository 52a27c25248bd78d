# Node 24 LTS (Node 20 reached end of life in April 2026; `engines` still allows 20 for local use).
# Build stage: `npm run build` compiles src/ and dev/gemini-emulator/ (started by src/app) to plain JavaScript once.
FROM node:24-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY dev ./dev
RUN npm run build

# Run stage: the compiled code and the production dependencies only (no tsx): nothing is compiled at run time.
FROM node:24-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
# dist/src and dist/dev take the place of src/ and dev/: beside package.json and migrations/, every path the
# code resolves from its own location holds as in the repository (the Gemini emulator, which src/app/gemini.ts
# starts when no GEMINI_API_KEY is set and GEMINI_EMULATOR=true: with NODE_ENV=production a missing key
# otherwise stops start-up).
COPY --from=build /app/dist ./
COPY migrations ./migrations
# The image's default mode (`all`, given a REDIS_URL and DATABASE_URL=embedded: NODE_ENV=production refuses an
# unset one, so no ENV sets it here) keeps the embedded PGlite and the dev API key in DATA_DIR (`.data`, under /app). /app and all it holds are root's, so the user below could not
# create it (the start failed with EACCES): it is made here and given to that user. A named volume mounted on
# /app/.data starts with this ownership.
RUN mkdir -p /app/.data && chown node:node /app/.data
USER node
EXPOSE 3000
# Exec form, node as PID 1: SIGTERM reaches agentq itself, which drains in-flight jobs before exiting
# (an npm wrapper would not forward it).
CMD ["node", "src/main.js", "all"]
