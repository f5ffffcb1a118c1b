// The size budget (8 kB minified + gzipped for the JSON build): prints the figure, fails above it.
import { buildSync } from "esbuild";
import { gzipSync } from "node:zlib";

const BUDGET = 8 * 1024;
const { outputFiles } = buildSync({
  entryPoints: ["src/index.ts"],
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2020",
  write: false,
});
const bytes = gzipSync(outputFiles[0].contents, { level: 9 }).length;
console.log(`switchboard-client: ${outputFiles[0].contents.length} bytes minified, ${bytes} bytes gzipped (budget ${BUDGET})`);
if (bytes > BUDGET) process.exit(1);
