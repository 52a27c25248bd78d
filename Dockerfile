# Node 24 LTS (Node 20 reached end of life in April 2026; `engines` still allows 20 for local use).
FROM node:24-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
# The Gemini emulator answers when no GEMINI_API_KEY is set (src/app/gemini.ts starts it).
COPY dev ./dev
COPY migrations ./migrations
USER node
EXPOSE 3000
# Exec form, node as PID 1: SIGTERM reaches agentq itself, which drains in-flight jobs before exiting
# (an npm wrapper would not forward it). tsx runs the TypeScript sources as they are.
CMD ["node", "--import", "tsx", "src/main.ts", "all"]
