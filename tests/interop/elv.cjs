// Drives a running cairn server with the official Files API client, @eluvio/elv-client-js,
// as its reference describes for a static token: /config, EditContentObject, UploadFiles,
// finalize (POST /q/{wt}), ListFiles, DownloadFile by object id and by version hash.
//
// usage: node elv.cjs <base-url> <token>   (env SMALL_FILES, default 3000; BIG_MIB, default 150)
// Prints "RESULT {json}" on success; exits non-zero with the reason otherwise.
"use strict";
const crypto = require("crypto");
const { ElvClient } = require("@eluvio/elv-client-js");

const MIB = 1024 * 1024;
const SMALL_FILES = Number(process.env.SMALL_FILES || 3000);
const BIG_MIB = Number(process.env.BIG_MIB || 150);

function fail(msg) {
  console.error("FAIL " + msg);
  process.exit(1);
}

async function api(url, token, method, path, body) {
  const r = await fetch(url + path, {
    method,
    headers: { Authorization: "Bearer " + token, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  if (!r.ok) fail(`${method} ${path}: ${r.status} ${text}`);
  return JSON.parse(text);
}

// Deterministic bytes: sha256 counter stream, distinct per seed.
function bytes(seed, len) {
  const out = Buffer.alloc(len);
  let off = 0;
  for (let i = 0; off < len; i++) {
    const block = crypto.createHash("sha256").update(`${seed}:${i}`).digest();
    off += block.copy(out, off);
  }
  return out;
}

async function main() {
  const [url, token] = process.argv.slice(2);
  const started = Date.now();
  const client = await ElvClient.FromConfigurationUrl({ configUrl: url + "/config" });
  client.SetStaticToken({ token, update: true });

  const lib = await api(url, token, "POST", "/qlibs", { name: "interop" });
  const created = await api(url, token, "POST", `/qlibs/${lib.id}/q`);
  const libraryId = lib.id;
  const objectId = created.id;

  const files = [
    { path: "/media/big.bin", mime_type: "application/octet-stream", data: bytes("big", BIG_MIB * MIB) },
    { path: "/empty.txt", mime_type: "text/plain", data: Buffer.alloc(0) },
  ];
  for (let i = 0; i < SMALL_FILES; i++) {
    files.push({ path: `/small/${String(i).padStart(4, "0")}.txt`, mime_type: "text/plain", data: bytes("s" + i, 1 + ((i * 7919) % 4096)) });
  }
  const fileInfo = files.map((f) => ({ path: f.path, type: "file", mime_type: f.mime_type, size: f.data.length, data: f.data }));

  const { write_token: writeToken } = await client.EditContentObject({ libraryId, objectId });
  await client.UploadFiles({ libraryId, objectId, writeToken, fileInfo });
  const final = await client.HttpClient.RequestJsonBody({
    method: "POST",
    path: `q/${writeToken}`,
    headers: { Authorization: "Bearer " + token },
  });
  const versionHash = final.hash;
  if (!versionHash || !versionHash.startsWith("hq__")) fail("finalize returned " + JSON.stringify(final));

  const tree = await client.ListFiles({ libraryId, objectId });
  if (tree.media["big.bin"]["."].size !== BIG_MIB * MIB) fail("ListFiles: wrong size for big.bin");
  if (Object.keys(tree.small).filter((k) => k !== ".").length !== SMALL_FILES) fail(`ListFiles: ${SMALL_FILES} small files expected`);
  if (tree["empty.txt"]["."].size !== 0) fail("ListFiles: empty.txt");

  let verified = 0;
  for (const [i, f] of files.entries()) {
    const filePath = f.path.replace(/^\/+/, "");
    const ways = f.data.length > MIB ? ["object", "version"] : [i % 2 ? "object" : "version"];
    for (const way of ways) {
      const args = way === "object" ? { libraryId, objectId } : { versionHash };
      const got = Buffer.from(await client.DownloadFile({ ...args, filePath, format: "arrayBuffer" }));
      if (Buffer.compare(got, f.data) !== 0) fail(`${filePath} by ${way}: ${got.length} bytes differ from ${f.data.length}`);
      verified += got.length;
    }
  }
  const total = files.reduce((n, f) => n + f.data.length, 0);
  console.log("RESULT " + JSON.stringify({ versionHash, files: files.length, uploadBytes: total, verifiedBytes: verified, seconds: (Date.now() - started) / 1000 }));
}

main().catch((e) => fail((e && e.stack) || JSON.stringify(e)));
