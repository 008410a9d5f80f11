import { DockerfileParser, type Instruction } from "dockerfile-ast";

/**
 * Lint rules for infra/docker/Dockerfile in the spirit of hadolint, plus what this image must do:
 * multi-stage, pinned glibc base, numeric non-root user, exec-form CMD (node must be PID 1 to get
 * SIGTERM and drain), production dependencies only, no build tools in the final stage.
 */

export interface DockerfileViolation {
  rule: string;
  line: number;
  message: string;
}

interface Stage {
  name: string | undefined;
  image: string;
  line: number;
  instructions: Instruction[];
}

const BUILD_TOOLS = /\b(build-essential|gcc|g\+\+|make|python3?|node-gyp|clang)\b/;

function substitute(text: string, args: Map<string, string>): string {
  return text.replace(/\$\{(\w+)\}|\$(\w+)/g, (whole, a: string | undefined, b: string | undefined) => args.get((a ?? b)!) ?? whole);
}

export function lintDockerfile(text: string): DockerfileViolation[] {
  const out: DockerfileViolation[] = [];
  const add = (rule: string, line: number, message: string) => out.push({ rule, line: line + 1, message });
  const dockerfile = DockerfileParser.parse(text);
  const lines = text.split("\n");

  // Global ARGs (before the first FROM) with defaults are what FROM lines may use.
  const args = new Map<string, string>();
  const stages: Stage[] = [];
  for (const instruction of dockerfile.getInstructions()) {
    const keyword = instruction.getKeyword();
    if (keyword === "FROM") {
      const parts = instruction.getArgumentsContent()?.split(/\s+/) ?? [];
      const as = parts.findIndex((p) => p.toUpperCase() === "AS");
      stages.push({
        name: as >= 0 ? parts[as + 1] : undefined,
        image: substitute(parts.find((p) => !p.startsWith("--")) ?? "", args),
        line: instruction.getRange().start.line,
        instructions: [],
      });
    } else if (stages.length === 0 && keyword === "ARG") {
      const [name, value] = (instruction.getArgumentsContent() ?? "").split("=", 2);
      if (name && value !== undefined) args.set(name.trim(), value.trim());
    } else if (stages.length > 0) {
      stages[stages.length - 1]!.instructions.push(instruction);
    }
  }
  if (stages.length === 0) {
    add("multi-stage", 0, "no FROM");
    return out;
  }
  if (stages.length < 2) add("multi-stage", stages[0]!.line, "build in one stage and run from another, so that build tools and dev dependencies stay out of the image");

  const stageNames = new Set(stages.map((s) => s.name).filter(Boolean));
  for (const stage of stages) {
    if (stageNames.has(stage.image)) continue;
    const [withTag, digest] = stage.image.split("@");
    const tag = withTag!.lastIndexOf(":") > withTag!.lastIndexOf("/") ? withTag!.slice(withTag!.lastIndexOf(":") + 1) : undefined;
    if (!digest && (!tag || tag === "latest")) add("base-tag", stage.line, `${stage.image}: pin a version tag (not latest) or a digest`);
    if (tag?.includes("$")) add("base-tag", stage.line, `${stage.image}: the tag uses an ARG without a default`);
  }

  const final = stages[stages.length - 1]!;
  const finalMatch = /^node:(\d+)(?:\.\d+){0,2}-bookworm(-slim)?(@.*)?$/.exec(final.image);
  if (!finalMatch || Number(finalMatch[1]) < 20) {
    add("base-glibc", final.line, `${final.image}: the final stage must be node:<20 or newer>-bookworm(-slim): uWebSockets.js needs glibc >= 2.34`);
  }

  const users = final.instructions.filter((i) => i.getKeyword() === "USER");
  const user = users.at(-1)?.getArgumentsContent()?.trim();
  if (!user) add("user", final.line, "the final stage must switch to a non-root USER");
  else if (!/^\d+(:\d+)?$/.test(user)) add("user", users.at(-1)!.getRange().start.line, `USER ${user}: use a numeric uid so that runAsNonRoot can verify it`);
  else if (/^0(:|$)/.test(user)) add("user", users.at(-1)!.getRange().start.line, "USER 0 is root");

  const healthchecks = final.instructions.filter((i) => i.getKeyword() === "HEALTHCHECK");
  if (healthchecks.length === 0) add("healthcheck", final.line, "the final stage needs a HEALTHCHECK, or HEALTHCHECK NONE with a comment saying why");
  for (const h of healthchecks) {
    if (h.getArgumentsContent()?.trim().toUpperCase() !== "NONE") continue;
    const above = lines[h.getRange().start.line - 1] ?? "";
    const commentAbove = /^\s*#/.test(above) && lines.slice(0, h.getRange().start.line).join("\n").includes("HEALTHCHECK NONE:");
    if (!commentAbove) add("healthcheck", h.getRange().start.line, 'HEALTHCHECK NONE needs a comment right above it starting "# HEALTHCHECK NONE:" with the reason');
  }

  const cmd = final.instructions.filter((i) => i.getKeyword() === "CMD" || i.getKeyword() === "ENTRYPOINT");
  if (cmd.length === 0) add("cmd", final.line, "the final stage needs a CMD");
  for (const c of cmd) {
    if (!(c.getArgumentsContent() ?? "").trim().startsWith("[")) {
      add("cmd", c.getRange().start.line, `${c.getKeyword()} in shell form runs under /bin/sh, which does not pass SIGTERM to node: use the JSON form`);
    }
  }

  for (const i of final.instructions) {
    const content = i.getArgumentsContent() ?? "";
    if (i.getKeyword() === "RUN" && /\b(apt-get|apt|apk)\s+(install|add)\b/.test(content) && BUILD_TOOLS.test(content)) {
      add("no-build-tools", i.getRange().start.line, "the final stage installs build tools");
    }
    if (i.getKeyword() === "RUN" && /\bnpm\s+(ci|install|i)\b/.test(content) && !/--omit=dev/.test(content)) {
      add("prod-deps", i.getRange().start.line, "npm in the final stage installs dev dependencies: use --omit=dev, or copy pruned node_modules");
    }
    if (i.getKeyword() === "ADD") add("no-add", i.getRange().start.line, "use COPY (ADD fetches URLs and unpacks archives implicitly)");
  }
  for (const stage of stages) {
    for (const i of stage.instructions) if (i.getKeyword() === "ADD") add("no-add", i.getRange().start.line, "use COPY (ADD fetches URLs and unpacks archives implicitly)");
  }

  // Production dependencies: the node_modules the final stage copies come from a stage that pruned
  // (or installed) them with --omit=dev, or the final stage installs them itself that way.
  const copies = final.instructions.filter((i) => i.getKeyword() === "COPY");
  const fromOf = (i: Instruction) => /--from=(\S+)/.exec(lines[i.getRange().start.line] ?? "")?.[1];
  const nodeModulesCopy = copies.find((i) => /node_modules/.test(i.getArgumentsContent() ?? ""));
  const omitsDev = (s: Stage | undefined) => s?.instructions.some((i) => i.getKeyword() === "RUN" && /npm\s+(prune|ci|install)\b[^&]*--omit=dev/.test(i.getArgumentsContent() ?? "")) ?? false;
  const fromStage = nodeModulesCopy ? stages.find((s) => s.name === fromOf(nodeModulesCopy)) : undefined;
  if (!omitsDev(fromStage) && !omitsDev(final)) add("prod-deps", final.line, "the final stage's node_modules must come from npm ci/prune --omit=dev");
  return out;
}

/**
 * Whether the Docker build context leaves a path out, by the rules of .dockerignore: patterns in order,
 * the last one that matches the path or one of its parent folders decides; `!` re-includes.
 */
export function dockerIgnores(patterns: string[], path: string): boolean {
  let excluded = false;
  const parts = path.split("/");
  const candidates = parts.map((_, i) => parts.slice(0, i + 1).join("/"));
  for (const raw of patterns) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const negated = line.startsWith("!");
    const pattern = (negated ? line.slice(1) : line).replace(/^\/+/, "").replace(/\/+$/, "");
    const regex = new RegExp(
      `^${pattern
        .split("/")
        .map((seg) => (seg === "**" ? "(?:.*)" : seg.replace(/[.+^${}()|\\]/g, "\\$&").replaceAll("*", "[^/]*").replaceAll("?", "[^/]")))
        .join("/")
        .replaceAll("(?:.*)/", "(?:.*/)?")}$`,
    );
    if (candidates.some((c) => regex.test(c))) excluded = !negated;
  }
  return excluded;
}
