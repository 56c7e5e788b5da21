// tus reference server for benches/http.sh: @tus/server with a FileStore.
// usage: node tus_server.mjs HOST PORT DATA_DIR   (run with cwd = the dir holding node_modules)
import { createRequire } from "node:module";
import path from "node:path";

// Resolve the packages from the working directory (benches/ has no node_modules of its own).
const require = createRequire(path.join(process.cwd(), "noop.js"));
const { Server } = await import(require.resolve("@tus/server"));
const { FileStore } = await import(require.resolve("@tus/file-store"));

const [host, port, dir] = process.argv.slice(2);
const server = new Server({
  path: "/files",
  datastore: new FileStore({ directory: dir }),
});
const http = server.listen({ host, port: Number(port) }, () => {
  console.error(`tus: serving http://${host}:${port}/files from ${dir}`);
});
http.requestTimeout = 0; // whole-file PATCHes may take longer than node's 300 s default
const stop = () => http.close(() => process.exit(0));
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
