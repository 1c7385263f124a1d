/**
 * `main.ts serve` as a subprocess against s3rver with a real model: events in, segmentations and
 * metrics out, duplicates once, outputs and malformed or unauthenticated requests ignored, a
 * broken case recorded, SIGTERM finishing the work in flight and exiting 0; the token and the
 * inference flags.
 * @module
 */
import { join } from "node:path";
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import { createUNet, disposeUNet, resolveConfig } from "../../model/mod.ts";
import type { JobView } from "../../pipeline/segmentation/mod.ts";
import { saveModel } from "../../pipeline/training/model_store.ts";
import {
  EVAL_REGIONS,
  evaluateDatasetPair,
  evaluatePair,
  METRICS,
} from "../../pipeline/evaluation/evaluation.ts";
import { decodeNifti, decodeNiftiHeader } from "../../pipeline/nifti/mod.ts";
import { writePhantomDataset } from "../../pipeline/synth/phantom.ts";
import { exists, getObject, listObjects, putObject } from "../../pipeline/storage/objects.ts";
import { ROOT, runMain } from "../_cli.ts";
import { startS3rver } from "../_s3rver.ts";
import { asAws, job, post, tempDir, TEST_EVENT } from "../segmentation/_service_fixtures.ts";
import {
  datasetModel,
  DIMS as DATASET_DIMS,
  NNUNET_DATASET,
  writeNnunet,
} from "../segmentation/_dataset_fixtures.ts";

// ---------------------------------------------------------------------------------------------
// `main.ts serve` as a subprocess, against s3rver, with a real (random) model

/** A running `main.ts serve`: its URL, log lines so far, and how to stop it. */
interface ServeProcess {
  url: string;
  logs: Record<string, unknown>[];
  output(): string;
  signal(sig: Deno.Signal): void;
  status: Promise<Deno.CommandStatus>;
  waitFor(pred: (l: Record<string, unknown>) => boolean, ms?: number): Promise<void>;
}

async function startServe(args: string[], env: Record<string, string>): Promise<ServeProcess> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "main.ts", "serve", ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const logs: Record<string, unknown>[] = [];
  let text = "";
  const waiters: (() => void)[] = [];
  const pump = async (stream: ReadableStream<Uint8Array>, parse: boolean) => {
    let partial = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      text += chunk;
      partial += chunk;
      const lines = partial.split("\n");
      partial = lines.pop()!;
      for (const line of lines) {
        if (!parse || !line.startsWith("{")) continue;
        try {
          logs.push(JSON.parse(line));
        } catch { /* not a log line */ }
      }
      waiters.splice(0).forEach((w) => w());
    }
    waiters.splice(0).forEach((w) => w());
  };
  const pumps = Promise.all([pump(child.stdout, true), pump(child.stderr, false)]);
  const status = child.status.then(async (s) => (await pumps, s));
  let exited = false;
  status.then(() => exited = true);
  const waitFor = async (pred: (l: Record<string, unknown>) => boolean, ms = 60_000) => {
    const deadline = Date.now() + ms;
    while (!logs.some(pred)) {
      if (exited) throw new Error(`serve exited before the awaited log line:\n${text}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for serve:\n${text}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 100);
        waiters.push(() => (clearTimeout(timer), resolve()));
      });
    }
  };
  try {
    await waitFor((l) => l.event === "listening");
  } catch (e) {
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
    await status;
    throw e;
  }
  const url = String(logs.find((l) => l.event === "listening")!.url);
  return {
    url,
    logs,
    output: () => text,
    signal: (sig) => child.kill(sig),
    status,
    waitFor,
  };
}

Deno.test({
  name: "serve: an event segments its case; duplicates, outputs and bad requests change nothing",
  // The child's stdout/stderr readers end with the process.
  sanitizeResources: true,
  async fn() {
    await using tmp = await tempDir();
    await using s3 = await startS3rver({ buckets: ["brats"] });
    const token = "s3cr3t-" + crypto.randomUUID();
    const env: Record<string, string> = { REVUNET_TOKEN: token };
    for (const [k, v] of Object.entries(Deno.env.toObject())) if (k.startsWith("AWS_")) env[k] = v;

    const net = createUNet(
      resolveConfig({ levels: 2, baseChannels: 4, blocksPerLevel: 1, expansion: 2 }),
      { seed: 1 },
    );
    // A training run's folder on S3: serve takes it as nnU-Net's predict does, using its best/.
    await saveModel("s3://brats/runs/tiny/best", net);
    disposeUNet(net);
    // Cases on disk first, then uploaded file by file so each upload's event can be replayed.
    const ids = await writePhantomDataset(join(tmp.path, "cases"), {
      cases: 3,
      dims: [32, 32, 32],
      seed: 5,
    });
    const upload = async (id: string, part: string, bytes?: Uint8Array) => {
      const name = `${id}_${part}.nii.gz`;
      const before = s3.events.length;
      await putObject(
        `s3://brats/incoming/${id}/${name}`,
        bytes ?? await Deno.readFile(join(tmp.path, "cases", id, name)),
      );
      return asAws(s3.events.slice(before));
    };

    const serve = await startServe([
      "--model",
      "s3://brats/runs/tiny",
      "--out",
      "s3://brats/seg/",
      "--input",
      "s3://brats/incoming/",
      "--port",
      "0",
      "--host",
      "127.0.0.1",
    ], env);
    let stopped = false;
    try {
      const loading = serve.logs.find((l) => l.event === "loading")!;
      assertEquals(loading.model, "s3://brats/runs/tiny/best/model.safetensors");
      assertStringIncludes(String(loading.note), "training run: using its best/");
      // The first modality of case 1: waiting, nothing queued.
      const [flairEvent] = await upload(ids[0], "flair");
      const waiting = await post(serve.url, flairEvent, token);
      assertEquals(
        [waiting.status, waiting.body.status],
        [202, "waiting"],
        JSON.stringify(waiting),
      );
      for (const p of ["t1", "t1ce", "seg"]) await upload(ids[0], p);
      const [last] = await upload(ids[0], "t2");

      const t0 = performance.now();
      const queued = await post(serve.url, last, token);
      assertEquals([queued.status, queued.body.status], [202, "queued"], JSON.stringify(queued));
      const done = await job(serve.url, String(queued.body.id), token);
      const latency = (performance.now() - t0) / 1000;
      assertEquals(done.status, "done", JSON.stringify(done));
      assertEquals(done.case, ids[0]);
      // The case came with its reference: the segmentation and its metrics, as evaluate has them.
      assertEquals(done.outputs, [
        `s3://brats/seg/${ids[0]}.nii.gz`,
        `s3://brats/seg/${ids[0]}.metrics.json`,
      ]);
      const header = decodeNiftiHeader(await getObject(done.outputs[0]), done.outputs[0]);
      assertEquals(header.dims.slice(0, 3), [32, 32, 32]);
      const reference = `s3://brats/incoming/${ids[0]}/${ids[0]}_seg.nii.gz`;
      const metrics = JSON.parse(new TextDecoder().decode(await getObject(done.outputs[1])));
      assertEquals([metrics.case, metrics.prediction, metrics.reference], [
        ids[0],
        done.outputs[0],
        reference,
      ]);
      const expected = (await evaluatePair(done.outputs[0], reference)).metrics;
      for (const r of EVAL_REGIONS) {
        for (const k of METRICS) {
          assert(Number.isFinite(metrics[r][k]), `${r} ${k}: ${metrics[r][k]}`);
        }
        assertEquals(metrics[r], expected[r]);
      }
      console.log(`event → segmentation and metrics of a 32³ case: ${latency.toFixed(2)} s`);

      // The same event again, and the events of the service's own outputs: nothing new.
      const outputEvents = asAws(
        s3.events.filter((e) => e.Records[0].s3.object.key.startsWith("seg/")),
      );
      assert(outputEvents.length >= 2, "the service's outputs raised events on s3rver");
      const dup = await post(serve.url, last, token);
      assertEquals([dup.status, dup.body.status], [200, "duplicate"], JSON.stringify(dup));
      for (const e of outputEvents) {
        const r = await post(serve.url, e, token);
        assertEquals([r.status, r.body.status], [200, "ignored"], JSON.stringify(r));
        assertStringIncludes(JSON.stringify(r.body.ignored), "output prefix");
      }
      // Malformed and unauthenticated requests: 400 and 401, nothing queued or written.
      const objectsBefore = (await listObjects("s3://brats/seg/")).map((o) => o.key);
      assertEquals((await post(serve.url, "{not json", token)).status, 400);
      assertEquals((await post(serve.url, { Records: [{ eventName: "x" }] }, token)).status, 400);
      assertEquals((await post(serve.url, last, undefined)).status, 401);
      assertEquals((await post(serve.url, last, "wrong")).status, 401);
      const basic = await fetch(serve.url, {
        method: "POST",
        headers: { authorization: `Basic ${btoa(`sns:${token}`)}` },
        body: JSON.stringify(TEST_EVENT),
      });
      assertEquals([basic.status, (await basic.json()).status], [200, "test"]);
      assertEquals(
        await fetch(`${serve.url}/jobs/${queued.body.id}`).then(async (
          r,
        ) => (await r.body?.cancel(), r.status)),
        401,
      );
      const jobs = await (await fetch(`${serve.url}/jobs`, {
        headers: { authorization: `Bearer ${token}` },
      })).json() as { jobs: JobView[] };
      assertEquals(jobs.jobs.length, 1, "one job for case 1, however many events");
      assertEquals((await listObjects("s3://brats/seg/")).map((o) => o.key), objectsBefore);

      // A broken volume: the job fails, the error is recorded, the service goes on.
      for (const p of ["flair", "t1ce", "t2"]) await upload(ids[1], p);
      const [broken] = await upload(ids[1], "t1", new TextEncoder().encode("not a NIfTI file"));
      const failed = await post(serve.url, broken, token);
      assertEquals(failed.status, 202, JSON.stringify(failed));
      const f = await job(serve.url, String(failed.body.id), token);
      assertEquals(f.status, "failed", JSON.stringify(f));
      assertStringIncludes(f.error!, `${ids[1]}_t1.nii.gz`);
      assertEquals(f.outputs, [`s3://brats/seg/${ids[1]}.error.json`]);
      const record = JSON.parse(new TextDecoder().decode(await getObject(f.outputs[0])));
      assertEquals(record.case, ids[1]);
      assertEquals(await exists(`s3://brats/seg/${ids[1]}.nii.gz`), false);
      const health = await fetch(`${serve.url}/healthz`);
      const h = await health.json();
      assertEquals([health.status, h.status, h.done, h.failed], [200, "ok", 1, 1]);

      // SIGTERM with a case just queued: it is finished, then the service exits 0.
      for (const p of ["flair", "t1", "t1ce"]) await upload(ids[2], p);
      const [third] = await upload(ids[2], "t2");
      const q3 = await post(serve.url, third, token);
      assertEquals(q3.status, 202);
      serve.signal("SIGTERM");
      const status = await serve.status;
      stopped = true;
      assertEquals(status.code, 0, serve.output());
      assert(await exists(`s3://brats/seg/${ids[2]}.nii.gz`), serve.output());
      assertEquals(
        await exists(`s3://brats/seg/${ids[2]}.metrics.json`),
        false,
        "no reference uploaded, no metrics",
      );
      const events = serve.logs.map((l) => `${l.event}${l.status ? ":" + l.status : ""}`);
      assert(
        events.indexOf("job:done", events.indexOf("draining")) > 0 && events.at(-1) === "stopped",
        events.join(" "),
      );
      assert(!serve.output().includes(token), "the token never appears in the logs");
    } finally {
      if (!stopped) {
        serve.signal("SIGKILL");
        await serve.status;
      }
    }
  },
});

Deno.test("serve refuses to start without a token unless --no-auth, naming the variable", async () => {
  const run = await runMain([
    "serve",
    "--model",
    "m",
    "--out",
    "o",
    "--token-env",
    "NO_SUCH_TOKEN_VAR",
  ]);
  assertEquals(run.code, 2, run.stderr);
  assertStringIncludes(run.stderr, "NO_SUCH_TOKEN_VAR");
  assertStringIncludes(run.stderr, "--no-auth");
  const bad = await runMain([
    "serve",
    "--model",
    "m",
    "--out",
    "o",
    "--no-auth",
    "--token-env",
    "X",
  ]);
  assertEquals(bad.code, 2, bad.stderr);
  // With --no-auth it starts; a model that does not exist is named and it exits 1.
  const missing = await runMain([
    "serve",
    "--model",
    "/nonexistent/model",
    "--out",
    "o",
    "--no-auth",
  ]);
  assertEquals(missing.code, 1, missing.stderr);
  assertStringIncludes(missing.stderr, "/nonexistent/model");
  // What would have been accepted, as segment lists it.
  assertStringIncludes(missing.stderr, "expected a training run folder");
  assertStringIncludes(missing.stderr, "/nonexistent/model/best/model.safetensors");
});

Deno.test({
  name: "serve --window and --et-threshold: parsed as segment parses them, applied to each case",
  sanitizeResources: true,
  async fn() {
    // Refused as segment refuses them, before anything is loaded.
    const base = ["serve", "--model", "/nonexistent/m", "--out", "o", "--no-auth"];
    const bad = await runMain([...base, "--window", "4"]);
    assertEquals(bad.code, 2, bad.stderr);
    assertStringIncludes(bad.stderr, '--window must be an integer >= 8 <= 1024, got "4"');
    const badEt = await runMain([...base, "--et-threshold", "-1"]);
    assertEquals(badEt.code, 2, badEt.stderr);
    assertStringIncludes(badEt.stderr, '--et-threshold must be an integer >= 0, got "-1"');

    await using tmp = await tempDir();
    await using s3 = await startS3rver({ buckets: ["brats"] });
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(Deno.env.toObject())) if (k.startsWith("AWS_")) env[k] = v;
    const net = createUNet(
      resolveConfig({ levels: 2, baseChannels: 4, blocksPerLevel: 1, expansion: 2 }),
      { seed: 1 },
    );
    await saveModel("s3://brats/model", net, undefined, { train_crop: "32" });
    disposeUNet(net);
    const [id] = await writePhantomDataset(join(tmp.path, "cases"), {
      cases: 1,
      dims: [32, 32, 32],
      seed: 5,
    });
    let last: unknown;
    for (const p of ["flair", "t1", "t1ce", "t2"]) {
      const before = s3.events.length;
      const name = `${id}_${p}.nii.gz`;
      await putObject(
        `s3://brats/in/${id}/${name}`,
        await Deno.readFile(join(tmp.path, "cases", id, name)),
      );
      [last] = asAws(s3.events.slice(before));
    }
    const serve = await startServe([
      ...["--model", "s3://brats/model", "--out", "s3://brats/seg/", "--no-auth"],
      ...["--port", "0", "--host", "127.0.0.1", "--window", "16", "--et-threshold", "7"],
    ], env);
    try {
      const queued = await post(serve.url, last, undefined);
      assertEquals(queued.status, 202, JSON.stringify(queued));
      const done = await job(serve.url, String(queued.body.id), "");
      assertEquals(done.status, "done", JSON.stringify(done));
      const record = JSON.parse(
        new TextDecoder().decode(await getObject(`s3://brats/seg/${id}.json`)),
      );
      // Without the flags: the training crop (32) and 0.
      assertEquals([record.options.window, record.options.et_threshold], [16, 7]);
    } finally {
      serve.signal("SIGTERM");
      assertEquals((await serve.status).code, 0, serve.output());
    }
  },
});

Deno.test({
  name:
    "serve --largest-component and --save-probabilities: segment's flags, applied as segment applies them",
  sanitizeResources: true,
  async fn() {
    // A value given to a switch: refused by both commands with the same message, exit 2.
    for (const flag of ["--largest-component=yes", "--save-probabilities=1"]) {
      const [serveBad, segmentBad] = await Promise.all([
        runMain(["serve", "--model", "/nonexistent/m", "--out", "o", "--no-auth", flag]),
        runMain(["segment", "--model", "/nonexistent/m", "--input", "i", "--out", "o", flag]),
      ]);
      assertEquals([serveBad.code, segmentBad.code], [2, 2], serveBad.stderr + segmentBad.stderr);
      const message = (stderr: string, command: string) =>
        stderr.split("\n").find((l) =>
          l.includes(`${command}: `) && l.includes(flag.split("=")[0])
        );
      const serveLine = message(serveBad.stderr, "serve");
      assert(serveLine, serveBad.stderr);
      assertStringIncludes(serveLine, "does not take an argument");
      assertEquals(
        serveLine.replace("serve: ", ""),
        message(segmentBad.stderr, "segment")?.replace("segment: ", ""),
      );
    }

    await using tmp = await tempDir();
    await using s3 = await startS3rver({ buckets: ["brats"] });
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(Deno.env.toObject())) if (k.startsWith("AWS_")) env[k] = v;
    const net = createUNet(
      resolveConfig({ levels: 2, baseChannels: 4, blocksPerLevel: 1, expansion: 2 }),
      { seed: 1 },
    );
    await saveModel("s3://brats/model", net, undefined, { train_crop: "32" });
    disposeUNet(net);
    const [id] = await writePhantomDataset(join(tmp.path, "cases"), {
      cases: 1,
      dims: [32, 32, 32],
      seed: 5,
    });
    let last: unknown;
    for (const p of ["flair", "t1", "t1ce", "t2"]) {
      const before = s3.events.length;
      const name = `${id}_${p}.nii.gz`;
      await putObject(
        `s3://brats/in/${id}/${name}`,
        await Deno.readFile(join(tmp.path, "cases", id, name)),
      );
      [last] = asAws(s3.events.slice(before));
    }
    const flags = ["--largest-component", "--save-probabilities"];
    const serve = await startServe([
      ...["--model", "s3://brats/model", "--out", "s3://brats/seg/", "--no-auth"],
      ...["--port", "0", "--host", "127.0.0.1", ...flags],
    ], env);
    let done: JobView;
    try {
      const queued = await post(serve.url, last, undefined);
      assertEquals(queued.status, 202, JSON.stringify(queued));
      done = await job(serve.url, String(queued.body.id), "");
      assertEquals(done.status, "done", JSON.stringify(done));
    } finally {
      serve.signal("SIGTERM");
      assertEquals((await serve.status).code, 0, serve.output());
    }
    assertEquals(done.outputs, [
      `s3://brats/seg/${id}.nii.gz`,
      `s3://brats/seg/${id}_probabilities.nii.gz`,
    ]);
    // segment with the same flags on the same case: the same record options, the same labels
    // (post-processed) and the same probabilities, byte for byte.
    const local = join(tmp.path, "seg");
    const seg = await runMain(
      [
        "segment",
        "--model",
        "s3://brats/model",
        "--input",
        `s3://brats/in/${id}/`,
        "--out",
        local,
        "--quiet",
        ...flags,
      ],
      env,
    );
    assertEquals(seg.code, 0, seg.stderr);
    const served = JSON.parse(
      new TextDecoder().decode(await getObject(`s3://brats/seg/${id}.json`)),
    );
    const segmented = JSON.parse(await Deno.readTextFile(join(local, `${id}.json`)));
    assertEquals(served.options.largest_component, true);
    assertEquals(served.options, segmented.options);
    for (const name of [`${id}.nii.gz`, `${id}_probabilities.nii.gz`]) {
      assertEquals(
        decodeNifti(await getObject(`s3://brats/seg/${name}`), name).data,
        decodeNifti(await Deno.readFile(join(local, name)), name).data,
        name,
      );
    }
  },
});

Deno.test({
  name:
    "serve: an nnU-Net case waits for the channels the model's dataset names, then is segmented in its labels and scored in its regions",
  sanitizeResources: true,
  async fn() {
    await using tmp = await tempDir();
    await using s3 = await startS3rver({ buckets: ["data"] });
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(Deno.env.toObject())) if (k.startsWith("AWS_")) env[k] = v;
    // The dataset on disk first, then uploaded file by file so each upload's event can be replayed.
    const [id] = await writeNnunet(join(tmp.path, "ds"), 1, 0);
    const model = await datasetModel(tmp.path, NNUNET_DATASET, 1);
    const upload = async (rel: string) => {
      const before = s3.events.length;
      await putObject(`s3://data/ds/${rel}`, await Deno.readFile(join(tmp.path, "ds", rel)));
      return asAws(s3.events.slice(before))[0];
    };
    const serve = await startServe([
      ...["--model", model, "--out", "s3://data/seg/", "--no-auth"],
      ...["--port", "0", "--host", "127.0.0.1"],
    ], env);
    let stopped = false;
    try {
      // Before: 200 "ignored: not a BraTS case file".
      const first = await post(serve.url, await upload(`imagesTr/${id}_0000.nii.gz`), undefined);
      assertEquals([first.status, first.body.status], [202, "waiting"], JSON.stringify(first));
      assertStringIncludes(JSON.stringify(first.body.waiting), "missing channel 0001 (T1)");
      const last = await post(serve.url, await upload(`imagesTr/${id}_0001.nii.gz`), undefined);
      assertEquals([last.status, last.body.status], [202, "queued"], JSON.stringify(last));
      const done = await job(serve.url, String(last.body.id), "");
      assertEquals(done.status, "done", JSON.stringify(done));
      assertEquals(done.outputs, [`s3://data/seg/${id}.nii.gz`], "no reference yet, no metrics");
      const seg = decodeNifti(await getObject(done.outputs[0]), done.outputs[0]);
      assertEquals(seg.header.dims, [...DATASET_DIMS]);
      assert([...new Set(seg.data as Uint8Array)].every((v) => v === 0 || v === 1));

      // The reference arriving in labelsTr/ starts the case again, for its metrics.
      const label = await post(serve.url, await upload(`labelsTr/${id}.nii.gz`), undefined);
      assertEquals([label.status, label.body.status], [202, "queued"], JSON.stringify(label));
      const scored = await job(serve.url, String(label.body.id), "");
      assertEquals(scored.status, "done", JSON.stringify(scored));
      assertEquals(scored.outputs, [
        `s3://data/seg/${id}.nii.gz`,
        `s3://data/seg/${id}.metrics.json`,
      ]);
      const metrics = JSON.parse(new TextDecoder().decode(await getObject(scored.outputs[1])));
      const reference = `s3://data/ds/labelsTr/${id}.nii.gz`;
      assertEquals(metrics.reference, reference);
      const expected = await evaluateDatasetPair(scored.outputs[0], reference, {
        regions: [{ name: "whole_tumor", labels: [1] }],
        order: [1],
      });
      assertEquals(metrics.whole_tumor, expected.metrics.whole_tumor);
      serve.signal("SIGTERM");
      const status = await serve.status;
      stopped = true;
      assertEquals(status.code, 0, serve.output());
    } finally {
      if (!stopped) {
        serve.signal("SIGKILL");
        await serve.status;
      }
    }
  },
});
