// Builds this function into a wasi:http component: `node build.mjs` (the [build] command of
// nimbus.toml). Written by `nimbus new`; yours to change.
//
// 1. Installs the toolchain pinned by package-lock.json (ComponentizeJS, TypeScript) with
//    `npm ci` when node_modules is missing or older than the lock.
// 2. TypeScript only: compiles src/app.ts to build/js/app.js with the locked `tsc`.
// 3. Runs ComponentizeJS on the JavaScript, against wit/ relabelled to the WASI 0.2.x release its
//    engine (StarlingMonkey) exports: the engine's wasi:http/incoming-handler is that release's,
//    and 0.2.x releases only add `@since`-gated items, so the WIT is wit/ minus the items added
//    later. Nimbus serves every 0.2.x release.
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = dirname(fileURLToPath(import.meta.url));
const out = join(root, "build", "{{name}}.wasm");
const npm = process.platform === "win32" ? "npm.cmd" : "npm";
const modules = join(root, "node_modules");
const cjs = join(modules, "@bytecodealliance", "componentize-js");

// Runs a tool with its output on stderr; on failure, stops the build with the tool's own message
// (not a Node.js stack trace).
function run(what, file, args, cwd) {
  try {
    execFileSync(file, args, { cwd, stdio: ["ignore", 2, 2] });
  } catch (e) {
    console.error(`build: ${what} failed${e.status ? ` (exit status ${e.status})` : `: ${e.message}`}`);
    process.exit(1);
  }
}

const mtime = (p) => (existsSync(p) ? statSync(p).mtimeMs : 0);
if (!existsSync(cjs) || mtime(join(root, "package-lock.json")) > mtime(join(modules, ".package-lock.json"))) {
  console.error("build: installing the toolchain locked by package-lock.json (npm ci)");
  run("npm ci", npm, ["ci", "--no-audit", "--no-fund", "--loglevel=error"], root);
}

let srcDir = join(root, "src");
if (existsSync(join(root, "tsconfig.json"))) {
  srcDir = join(root, "build", "js");
  rmSync(srcDir, { recursive: true, force: true });
  // tsc prints type errors with file:line and exits non-zero: the build stops here.
  run("tsc", process.execPath, [join(modules, "typescript", "bin", "tsc"), "-p", root], root);
}

const engine = readFileSync(join(cjs, "lib", "starlingmonkey_embedding.wasm")).toString("latin1");
const found = /wasi:http\/incoming-handler@0\.2\.(\d+)/.exec(engine);
if (!found) throw new Error("cannot tell which wasi:http release the ComponentizeJS engine exports");
const patch = Number(found[1]);
const wit = join(root, "build", "wit");
rmSync(wit, { recursive: true, force: true });
mkdirSync(join(wit, "deps"), { recursive: true });
const relabel = (text) => text.replace(/@0\.2\.12\b/g, `@0.2.${patch}`);
for (const file of readdirSync(join(root, "wit", "deps"))) {
  const lines = readFileSync(join(root, "wit", "deps", file), "utf8").split("\n");
  const kept = [];
  for (let i = 0; i < lines.length; i++) {
    const since = /@since\(version = 0\.2\.(\d+)\)/.exec(lines[i]);
    if (since && Number(since[1]) > patch) {
      // Drop the one-line item gated on a later release.
      if (!/;\s*$/.test(lines[i + 1] ?? "")) throw new Error(`cannot drop ${file}: ${lines[i + 1]}`);
      i++;
      continue;
    }
    kept.push(lines[i]);
  }
  writeFileSync(join(wit, "deps", file), relabel(kept.join("\n")));
}
writeFileSync(join(wit, "world.wit"), relabel(readFileSync(join(root, "wit", "world.wit"), "utf8")));

mkdirSync(join(root, "build"), { recursive: true });
const tmp = `${out}.tmp`;
// Run from the source directory so that stack traces name `app.js`, not a path on this machine.
run("componentize-js", process.execPath, [join(cjs, "src", "cli.js"), "app.js", "-w", wit, "-n", "proxy", "-o", tmp], srcDir);
renameSync(tmp, out);
console.error(`build: ${out} (${statSync(out).size} bytes)`);
