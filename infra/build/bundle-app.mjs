// Bundles an app's compiled entry (tsc's output) and the workspace packages and libraries it imports
// into one ES module file, so that a process starts by reading one file instead of some 500 modules:
// a gateway's CPU to "listening" halves (about 1.0 s to 0.5 s on the 2-core development machine),
// which matters for pods that restart and for the test suite, which starts hundreds of processes.
//
// usage: node infra/build/bundle-app.mjs <compiled entry> <bundle>   (paths relative to the app)
//
// Modules keep finding their files (Lua scripts, migrations, the browser client) where the build put
// them: each bundled module's `import.meta.url` becomes its own original URL, computed from the
// bundle's location at run time, so a bundle moved together with the tree (the Docker image) works.
import { build } from "esbuild";
import { readdir, readFile, rm } from "node:fs/promises";
import path from "node:path";

const [entry, outfile] = process.argv.slice(2);
if (!entry || !outfile) {
  console.error("usage: node infra/build/bundle-app.mjs <compiled entry> <bundle>");
  process.exit(2);
}
const outDir = path.dirname(path.resolve(outfile));

/**
 * Gives each module the location it had before bundling: `import.meta.url` in ES modules, and
 * `__dirname`/`__filename` in CommonJS ones (ioredis reads its package.json through it), which an
 * ES module bundle does not define.
 */
const keepModuleUrls = {
  name: "keep-module-urls",
  setup(b) {
    b.onLoad({ filter: /\.[cm]?js$/ }, async (args) => {
      const source = await readFile(args.path, "utf8");
      const relative = path.relative(outDir, args.path).split(path.sep).join("/");
      if (source.includes("import.meta.url")) {
        const original = `new URL(${JSON.stringify(relative)}, import.meta.url).href`;
        return { contents: source.replaceAll("import.meta.url", original), loader: "js" };
      }
      if (/\b__(dirname|filename)\b/.test(source)) {
        const file = `__bundlePath.join(__bundleDir, ${JSON.stringify(relative)})`;
        return { contents: `var __filename = ${file}, __dirname = __bundlePath.dirname(__filename);\n${source}`, loader: "js" };
      }
      return undefined;
    });
  },
};

// Dynamic imports (the S3 media storage, used only with CHAT_MEDIA_STORAGE=s3) become chunks, loaded
// when used. They sit next to the entry, so the URLs above are right for them too.
const name = path.basename(outfile, ".js");
const chunkPrefix = `${name}.`;
for (const file of await readdir(outDir)) if (file.startsWith(chunkPrefix) && file.endsWith(".js") && file !== `${name}.js`) await rm(path.join(outDir, file));
await build({
  entryPoints: { [name]: entry },
  outdir: outDir,
  splitting: true,
  chunkNames: `${chunkPrefix}[name]-[hash]`,
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node20",
  logLevel: "warning",
  plugins: [keepModuleUrls],
  external: [
    // A native addon, loaded by path from its own package.
    "uWebSockets.js",
    // @chat/db's closed-socket guard recognizes postgres.js' own exception by its file in the stack.
    "postgres",
    // Imported by the S3 media storage's chunk only, with CHAT_MEDIA_STORAGE=s3.
    "@aws-sdk/*",
    // The embedded engine: WebAssembly and data files that it finds next to its own modules.
    "@electric-sql/pglite",
    "@electric-sql/pglite/*",
  ],
  // Bundled CommonJS libraries (ioredis, prom-client, ...) call require() for Node's built-ins; the
  // plugin's __dirname is relative to the bundle's own directory.
  banner: {
    js: [
      'import { createRequire as __bundleRequire } from "node:module";',
      'import __bundlePath from "node:path";',
      'import { fileURLToPath as __bundleFileUrl } from "node:url";',
      "const require = __bundleRequire(import.meta.url);",
      "const __bundleDir = __bundlePath.dirname(__bundleFileUrl(import.meta.url));",
    ].join("\n"),
  },
});

