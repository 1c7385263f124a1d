/**
 * The smoke test of a built image, run on the host by deploy/container.sh (any engine, any image):
 *
 * 1. `demo` inside the container with no network at all (`--network none`), into a host folder;
 * 2. `segment` of a demo case from and to an s3rver on the host, credentials passed by name from
 *    the environment, and the same labels as the demo's own segmentation of that case;
 * 3. `serve` answering an S3 event for a case uploaded to the same s3rver and writing its
 *    segmentation and metrics there, then exiting 0 on SIGTERM;
 * and that the image runs as a non-root user. Steps 2 and 3 reach S3 on 127.0.0.1 (host network)
 * with every other HTTP(S) request sent to a proxy that refuses, so nothing else is fetched.
 * Prints one JSON line of step times; exits 1 naming the step that failed.
 *
 *   deno run -A --lock=tests/deno.lock deploy/container_smoke.ts --engine podman --image revunet-deno:cpu
 * @module
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { getObject, listObjects, putObject } from "../pipeline/storage/mod.ts";
import { decodeNifti } from "../pipeline/nifti/mod.ts";
import { startS3rver } from "../tests/_s3rver.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    engine: { type: "string", default: "podman" },
    image: { type: "string" },
    backend: { type: "string", default: "cpu" },
    keep: { type: "boolean", default: false },
  },
});
if (!values.image) throw new Error("container_smoke.ts: --image <tag> is required");
const IMAGE = values.image;
const BACKEND = values.backend!;
const ENGINE = values.engine === "docker" ? ["docker"] : [
  "podman",
  "--storage-driver",
  Deno.env.get("REVUNET_STORAGE_DRIVER") ?? "vfs",
  "--runtime",
  Deno.env.get("REVUNET_RUNTIME") ?? "runc",
  "--cgroup-manager",
  "cgroupfs",
];

const times: Record<string, number> = {};
function fail(step: string, why: string): never {
  console.error(`container smoke test: ${step}: ${why}`);
  Deno.exit(1);
}

async function engine(args: string[], env?: Record<string, string>) {
  const out = await new Deno.Command(ENGINE[0], {
    args: [...ENGINE.slice(1), ...args],
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

async function timed<T>(step: string, f: () => Promise<T>): Promise<T> {
  const t0 = performance.now();
  const r = await f();
  times[step] = Math.round((performance.now() - t0) / 100) / 10;
  console.error(`container smoke test: ${step} passed in ${times[step]} s`);
  return r;
}

/** The last JSON line a command printed. */
function lastJson(step: string, stdout: string): Record<string, unknown> {
  const line = stdout.trim().split("\n").findLast((l) => l.startsWith("{"));
  if (!line) fail(step, `no JSON summary on stdout:\n${stdout.slice(-2000)}`);
  return JSON.parse(line);
}

const labels = async (path: string) => decodeNifti(await Deno.readFile(path), path).data;
function sameLabels(a: ArrayLike<number>, b: ArrayLike<number>): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

const work = await Deno.makeTempDir({ prefix: "revunet-smoke-" });
await Deno.chmod(work, 0o777); // the container's user (uid 1000) writes here
const backendFlag = ["--backend", BACKEND];

// The user the image runs as.
const user = (await engine(["image", "inspect", "--format", "{{.Config.User}}", IMAGE])).stdout
  .trim();
if (user === "" || user === "0" || user === "root") fail("user", `the image runs as "${user}"`);

// 1. demo, offline.
const demo = await timed("demo", async () => {
  const r = await engine([
    "run",
    "--rm",
    "--network",
    "none",
    "-v",
    `${work}:/work`,
    IMAGE,
    "demo",
    "--out",
    "/work/demo",
    "--cases",
    "3",
    "--size",
    "32,32,32",
    "--epochs",
    "1",
    "--steps-per-epoch",
    "2",
    ...backendFlag,
  ]);
  if (r.code !== 0) fail("demo", `exit ${r.code}\n${r.stderr.slice(-3000)}`);
  const summary = lastJson("demo", r.stdout) as { held_out: string[]; backend: string };
  for (const f of ["report/index.html", "run/best/model.safetensors", "eval/metrics.json"]) {
    await Deno.stat(join(work, "demo", f)).catch(() => fail("demo", `no ${f} written`));
  }
  return summary;
});
const id = demo.held_out[0];

// 2. segment, from and to S3 on the host.
await using s3 = await startS3rver({ buckets: ["smoke"] });
const s3env = Object.fromEntries(
  Object.entries(Deno.env.toObject()).filter(([k]) => k.startsWith("AWS_")),
);
const offline = {
  HTTP_PROXY: "http://127.0.0.1:9",
  HTTPS_PROXY: "http://127.0.0.1:9",
  NO_PROXY: "127.0.0.1,localhost",
};
const passEnv = (names: string[]) => names.flatMap((n) => ["-e", n]);
const s3Names = [...Object.keys(s3env), ...Object.keys(offline)];
const childEnv = { ...Deno.env.toObject(), ...offline };
await putObject(
  "s3://smoke/model/model.safetensors",
  await Deno.readFile(join(work, "demo/run/best/model.safetensors")),
);
const parts = ["flair", "t1", "t1ce", "t2", "seg"];
const caseFile = (p: string) => join(work, "demo/data", id, `${id}_${p}.nii.gz`);
for (const p of parts) {
  await putObject(`s3://smoke/cases/${id}/${id}_${p}.nii.gz`, await Deno.readFile(caseFile(p)));
}
await timed("segment", async () => {
  const r = await engine([
    "run",
    "--rm",
    "--network",
    "host",
    ...passEnv(s3Names),
    IMAGE,
    "segment",
    "--model",
    "s3://smoke/model/",
    "--input",
    "s3://smoke/cases/",
    "--out",
    "s3://smoke/seg/",
    ...backendFlag,
  ], childEnv);
  if (r.code !== 0) fail("segment", `exit ${r.code}\n${r.stderr.slice(-3000)}`);
  const keys = (await listObjects("s3://smoke/seg/")).map((o) => o.key).sort();
  for (const k of [`${id}.json`, `${id}.nii.gz`]) {
    if (!keys.includes(k)) fail("segment", `no s3://smoke/seg/${k} (found ${keys.join(", ")})`);
  }
  const bytes = await getObject(`s3://smoke/seg/${id}.nii.gz`);
  const fromS3 = join(work, "segment.nii.gz");
  await Deno.writeFile(fromS3, bytes);
  if (!sameLabels(await labels(fromS3), await labels(join(work, "demo/seg", `${id}.nii.gz`)))) {
    fail("segment", `s3://smoke/seg/${id}.nii.gz differs from the demo's segmentation of ${id}`);
  }
});

// 3. serve: an S3 event in, a segmentation and its metrics out.
const port = (() => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const p = (l.addr as Deno.NetAddr).port;
  l.close();
  return p;
})();
const token = crypto.randomUUID();
const name = `revunet-smoke-${port}`;
await timed("serve", async () => {
  const r = await engine([
    "run",
    "-d",
    "--name",
    name,
    "--network",
    "host",
    ...passEnv([...s3Names, "REVUNET_TOKEN"]),
    IMAGE,
    "serve",
    "--model",
    "s3://smoke/model/",
    "--out",
    "s3://smoke/served/",
    "--input",
    "s3://smoke/incoming/",
    "--host",
    "127.0.0.1",
    "--port",
    String(port),
    ...backendFlag,
  ], { ...childEnv, REVUNET_TOKEN: token });
  if (r.code !== 0) fail("serve", `exit ${r.code}\n${r.stderr.slice(-3000)}`);
  const url = `http://127.0.0.1:${port}`;
  const logs = async () => (await engine(["logs", name])).stderr.slice(-3000);
  try {
    const uid = (await engine(["exec", name, "id", "-u"])).stdout.trim();
    if (uid === "0") fail("user", "serve runs as root");
    const deadline = Date.now() + 300_000;
    for (;;) {
      const ok = await fetch(`${url}/healthz`).then(async (h) => {
        await h.body?.cancel();
        return h.ok;
      }, () => false);
      if (ok) break;
      if (Date.now() > deadline) fail("serve", `no /healthz answer in 300 s\n${await logs()}`);
      await new Promise((res) => setTimeout(res, 1000));
    }
    let last: unknown;
    for (const p of parts) {
      const before = s3.events.length;
      await putObject(
        `s3://smoke/incoming/${id}/${id}_${p}.nii.gz`,
        await Deno.readFile(caseFile(p)),
      );
      last = s3.events.at(-1);
      if (s3.events.length === before) fail("serve", "s3rver emitted no event for an upload");
    }
    const post = await fetch(`${url}/events`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify(last),
    });
    const queued = await post.json();
    if (post.status !== 202 || queued.status !== "queued") {
      fail("serve", `event answered ${post.status} ${JSON.stringify(queued)}\n${await logs()}`);
    }
    let job: { status: string; outputs?: string[]; error?: unknown };
    for (;;) {
      const j = await fetch(`${url}/jobs/${queued.id}`, {
        headers: { authorization: `Bearer ${token}` },
      });
      job = await j.json();
      if (job.status !== "queued" && job.status !== "running") break;
      if (Date.now() > deadline) fail("serve", `job still ${job.status} after 300 s`);
      await new Promise((res) => setTimeout(res, 1000));
    }
    const want = [`s3://smoke/served/${id}.nii.gz`, `s3://smoke/served/${id}.metrics.json`];
    if (job.status !== "done" || JSON.stringify(job.outputs) !== JSON.stringify(want)) {
      fail("serve", `job ${JSON.stringify(job)}\n${await logs()}`);
    }
    const metrics = JSON.parse(new TextDecoder().decode(await getObject(want[1])));
    if (metrics.case !== id) fail("serve", `metrics for ${metrics.case}, not ${id}`);
    await Deno.writeFile(join(work, "served.nii.gz"), await getObject(want[0]));
    if (
      !sameLabels(
        await labels(join(work, "served.nii.gz")),
        await labels(join(work, "segment.nii.gz")),
      )
    ) {
      fail("serve", "the service's segmentation differs from segment's");
    }
    const stop = await engine(["stop", "-t", "120", name]);
    if (stop.code !== 0) fail("serve", `stop: ${stop.stderr}`);
    const exit = (await engine(["inspect", "--format", "{{.State.ExitCode}}", name])).stdout.trim();
    if (exit !== "0") fail("serve", `exited ${exit} on SIGTERM\n${await logs()}`);
  } finally {
    await engine(["rm", "-f", name]);
  }
});

if (!values.keep) await Deno.remove(work, { recursive: true });
console.log(JSON.stringify({
  image: IMAGE,
  backend: BACKEND,
  demo_backend: demo.backend,
  user,
  case: id,
  seconds: times,
}));
