/**
 * The lock on a training run's output (pipeline/storage/run_lock.ts): taken and released, refused while
 * held naming the holder, a stale lock of this host taken over, another host's never; on a real
 * s3rver (which ignores `If-None-Match` on PUT, so the lock reads first) and on a fake endpoint
 * that answers the conditional PUT with 412 as S3 does; and `train` with it: a second run on the
 * same `--out` exits 1 naming the first, and `--out` equal to or inside `--data` is refused.
 */
import { assert, assertEquals, assertRejects } from "@std/assert";
import {
  acquireRunLock,
  isWithin,
  LOCK_FILE,
  type LockHolder,
  RunLockedError,
  staleReason,
} from "../../pipeline/storage/run_lock.ts";
import { createObject, exists, getObject, resetS3Clients } from "../../pipeline/storage/objects.ts";
import { startS3rver, useS3Env } from "../_s3rver.ts";
import { runMain } from "../_cli.ts";
import { pathMissing, phantomDataset, spawnTrain, TINY_JSON } from "../_train_fixtures.ts";

const holderOf = async (uri: string): Promise<LockHolder> =>
  JSON.parse(new TextDecoder().decode(await getObject(uri)));

/** The pid of a process that has exited (so it is not running now). */
async function deadPid(): Promise<number> {
  const child = new Deno.Command("true").spawn();
  await child.status;
  return child.pid;
}

Deno.test("acquireRunLock: held, refused naming the holder, released; a stale lock of this host is taken over, another host's is not", async () => {
  const dir = await Deno.makeTempDir({ prefix: "revunet-lock-" });
  const out = `${dir}/run`;
  const uri = `${out}/${LOCK_FILE}`;
  try {
    const lock = await acquireRunLock(out, "train");
    const h = await holderOf(uri);
    assertEquals([h.pid, h.host, h.command], [Deno.pid, Deno.hostname(), "train"]);
    assertEquals(staleReason(h), undefined, "this process is running");
    const e = await assertRejects(() => acquireRunLock(out, "train"), RunLockedError);
    assert(
      e.message.startsWith(
        `${out} is in use by another run: train pid ${Deno.pid} on host ${Deno.hostname()}, since ${h.since} holds ${uri}`,
      ),
      e.message,
    );
    assertEquals(e.holder?.token, h.token);
    await lock.release();
    assert(!(await exists(uri)), "released");
    // A release never removes a lock another run took since.
    const second = await acquireRunLock(out, "train");
    await lock.release();
    assert(await exists(uri), "the second run's lock stays");
    await second.release();

    // SIGKILLed holder on this host: its pid is not running, so the lock is stale.
    const stale = { ...h, pid: await deadPid(), token: "dead" };
    await Deno.mkdir(out, { recursive: true }); // the released lock took its empty folder along
    await Deno.writeTextFile(uri, JSON.stringify(stale));
    assertEquals(staleReason(stale), `process ${stale.pid} is not running`);
    const logs: string[] = [];
    const taken = await acquireRunLock(out, "train", (m) => logs.push(m));
    assertEquals(logs.length, 1);
    assert(logs[0].includes(`removed the stale lock ${uri} of train pid ${stale.pid}`), logs[0]);
    assertEquals((await holderOf(uri)).pid, Deno.pid);
    await taken.release();

    // A running pid that is another process than the holder (the pid was reused).
    const reused = { ...h, processStart: "1", token: "reused" };
    assert(staleReason(reused)?.includes("is another process now"), "pid reuse is stale");

    // Another host's lock: not judged from here, whatever its pid.
    const remote = { ...stale, host: `not-${Deno.hostname()}`, token: "remote" };
    await Deno.mkdir(out, { recursive: true });
    await Deno.writeTextFile(uri, JSON.stringify(remote));
    const r = await assertRejects(() => acquireRunLock(out, "train"), RunLockedError);
    assert(r.message.includes(`on host ${remote.host}`) && r.message.includes("another host's"));
    assert(r.message.endsWith(`remove ${uri}`), r.message);
    await Deno.remove(uri);

    // Something else at the lock's name is not overwritten.
    await Deno.writeTextFile(uri, "hello");
    await assertRejects(() => acquireRunLock(out, "train"), RunLockedError, "not a lock file");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("createObject locally: exactly one of many concurrent creators wins, and the file is whole", async () => {
  const dir = await Deno.makeTempDir({ prefix: "revunet-lock-" });
  try {
    const uri = `${dir}/a/claim`;
    const wins = await Promise.all(
      Array.from({ length: 16 }, (_, i) => createObject(uri, `writer ${i}`.repeat(1000))),
    );
    assertEquals(wins.filter(Boolean).length, 1);
    const winner = wins.indexOf(true);
    assertEquals(new TextDecoder().decode(await getObject(uri)), `writer ${winner}`.repeat(1000));
    const left = [...Deno.readDirSync(`${dir}/a`)].map((e) => e.name);
    assertEquals(left, ["claim"], "no temporary file left");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("s3: the run lock on s3rver (which ignores If-None-Match on PUT) is taken, refused while held, released", async () => {
  await using _s3 = await startS3rver({ buckets: ["runs"] });
  const out = "s3://runs/exp1";
  const uri = `${out}/${LOCK_FILE}`;
  // s3rver 3.7.1 overwrites despite the condition: why the lock looks before it writes.
  assertEquals(await createObject("s3://runs/probe", "a"), true);
  assertEquals(await createObject("s3://runs/probe", "b"), true, "s3rver ignores If-None-Match");
  const lock = await acquireRunLock(out, "train");
  assertEquals((await holderOf(uri)).pid, Deno.pid);
  const e = await assertRejects(() => acquireRunLock(out, "train"), RunLockedError);
  assert(e.message.includes(`holds ${uri}`), e.message);
  await lock.release();
  assert(!(await exists(uri)));
  const again = await acquireRunLock(out, "train");
  await again.release();
});

/** A fake S3 endpoint that, like S3, answers a PUT with `If-None-Match: *` on a taken key 412. */
function conditionalServer() {
  const objects = new Map<string, Uint8Array<ArrayBuffer>>();
  const conditions: (string | null)[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const key = new URL(req.url).pathname;
    if (req.method === "PUT") {
      conditions.push(req.headers.get("if-none-match"));
      if (req.headers.get("if-none-match") === "*" && objects.has(key)) {
        await req.body?.cancel();
        return new Response(
          "<Error><Code>PreconditionFailed</Code><Message>At least one of the pre-conditions you specified did not hold</Message></Error>",
          { status: 412, headers: { "content-type": "application/xml" } },
        );
      }
      objects.set(key, new Uint8Array(await req.arrayBuffer()));
      return new Response(null, { status: 200, headers: { etag: '"e"' } });
    }
    const body = objects.get(key);
    if (req.method === "GET" && body) return new Response(body);
    return new Response("<Error><Code>NoSuchKey</Code></Error>", {
      status: 404,
      headers: { "content-type": "application/xml" },
    });
  });
  return {
    endpoint: `http://127.0.0.1:${server.addr.port}`,
    conditions,
    [Symbol.asyncDispose]: async () => {
      await resetS3Clients();
      await server.shutdown();
    },
  };
}

Deno.test("s3: createObject sends If-None-Match: * and reads 412 as 'already there'", async () => {
  await using fake = conditionalServer();
  await using _env = useS3Env(fake.endpoint);
  assertEquals(await createObject("s3://runs/exp1/train.lock", "first"), true);
  assertEquals(await createObject("s3://runs/exp1/train.lock", "second"), false);
  assertEquals(fake.conditions, ["*", "*"]);
  assertEquals(new TextDecoder().decode(await getObject("s3://runs/exp1/train.lock")), "first");
});

Deno.test("isWithin: equal, inside, beside and through symbolic links; S3 prefixes by bucket", async () => {
  const dir = await Deno.makeTempDir({ prefix: "revunet-lock-" });
  try {
    await Deno.mkdir(`${dir}/data/cases`, { recursive: true });
    await Deno.symlink(`${dir}/data`, `${dir}/link`);
    const cases: [string, string, boolean][] = [
      [`${dir}/data`, `${dir}/data`, true],
      [`${dir}/data/`, `${dir}/data`, true],
      [`${dir}/data/run`, `${dir}/data`, true],
      [`${dir}/data/./cases/../run/x`, `${dir}/data`, true],
      [`${dir}/link/run`, `${dir}/data`, true],
      [`${dir}/data-run`, `${dir}/data`, false],
      [`${dir}`, `${dir}/data`, false],
      ["s3://b/data/run", "s3://b/data", true],
      ["s3://b/data", "s3://b/data/", true],
      ["s3://b/anything", "s3://b", true],
      ["s3://b/data-run", "s3://b/data", false],
      ["s3://c/data/run", "s3://b/data", false],
      [`${dir}/data`, "s3://b/data", false],
    ];
    for (const [inner, outer, want] of cases) {
      assertEquals(await isWithin(inner, outer), want, `${inner} within ${outer}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("train CLI: a second run on a locked --out exits 1 naming the holder; --out equal to or inside --data is refused", async () => {
  const data = await phantomDataset("revunet-lock-");
  const dir = await Deno.makeTempDir({ prefix: "revunet-lock-" });
  const out = `${dir}/run`;
  const args = (o: string, d = data) => [
    "--data",
    d,
    "--out",
    o,
    // Runs until stopped.
    "--epochs",
    "1",
    "--steps-per-epoch",
    "1000000",
    "--crop",
    "8",
    "--config",
    TINY_JSON,
  ];
  try {
    // Two runs started together: the second is refused while the first loads or trains.
    const first = spawnTrain(args(out));
    try {
      await first.waitFor(/training and \d+ validation cases ready/);
      const holder = await holderOf(`${out}/${LOCK_FILE}`);
      assertEquals(holder.pid, first.child.pid);
      // A short run: without the lock it would finish beside the first with exit 0.
      const second = await runMain([
        "train",
        ...args(out),
        "--steps-per-epoch",
        "1",
        "--quiet",
      ]);
      assertEquals(second.code, 1, second.stderr);
      assert(
        second.stderr.includes(`${out} is in use by another run: train pid ${first.child.pid}`),
        second.stderr,
      );
    } finally {
      first.child.kill("SIGTERM");
      assertEquals((await first.child.status).code, 143);
    }
    assert(await pathMissing(`${out}/${LOCK_FILE}`), "the stopped run released its lock");
    assert(await exists(`${out}/latest.json`), "and saved a checkpoint");

    // Two resumes of one preempted run (a retried job): the second is refused.
    const resumed = spawnTrain(["--out", out, "--resume"]);
    try {
      await resumed.waitFor(/training and \d+ validation cases ready/);
      // Without the lock this would train on beside the first: stopped after 60 s if so.
      const again = spawnTrain(["--out", out, "--resume", "--quiet"]);
      const timer = setTimeout(() => again.child.kill("SIGKILL"), 60_000);
      const { code, stderr } = await again.finish();
      clearTimeout(timer);
      assertEquals(code, 1, stderr);
      assert(
        stderr.includes(`is in use by another run: train pid ${resumed.child.pid}`),
        stderr,
      );
    } finally {
      resumed.child.kill("SIGTERM");
      assertEquals((await resumed.child.status).code, 143);
    }

    for (const inside of [data, `${data}/run`]) {
      const refused = await runMain(["train", ...args(inside), "--quiet"]);
      assertEquals(refused.code, 2, refused.stderr);
      assert(refused.stderr.includes(`--out ${inside} is `), refused.stderr);
      assert(refused.stderr.includes("choose an --out outside it"), refused.stderr);
    }
    assert(await pathMissing(`${data}/run`), "nothing written into --data");
    assert(await pathMissing(`${data}/cache`), "nothing written into --data");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
