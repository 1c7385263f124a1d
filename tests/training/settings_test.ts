/**
 * The training engine's settings and what it tells its caller, without the command line:
 * pipeline/training/settings.ts (one set of defaults, documented and the help's, checked in one
 * place with errors naming the flag) and events.ts (the printer the command line uses), and that
 * `train()` itself prints nothing and throws no usage error.
 * @module
 */
import { assert, assertEquals, assertRejects, assertThrows } from "@std/assert";
import {
  checkSettings,
  defaultSettings,
  networkConfigFlag,
  newRunSettings,
  SETTING_FLAGS,
  SETTING_LIMITS,
  SettingsError,
  train,
  type TrainEvent,
  trainEventPrinter,
  type TrainSettings,
} from "../../pipeline/training/mod.ts";
import { trainCommand } from "../../tasks/train.ts";
import { ROOT, runCommand } from "../_cli.ts";
import { pathMissing, phantomDataset, tinySettings } from "../_train_fixtures.ts";

const dataset = () => phantomDataset("revunet-settings-");

Deno.test("TrainSettings: every field documents its @default, and the help states the same defaults", async () => {
  const source = await Deno.readTextFile(
    new URL("../../pipeline/training/settings.ts", import.meta.url),
  );
  const body = source.slice(source.indexOf("export interface TrainSettings {"));
  const d = defaultSettings("x");
  for (const key of Object.keys(d).filter((k) => k !== "data")) {
    // The doc comment right before the field names its default.
    const at = body.indexOf(`\n  ${key}: `);
    assert(at > 0, `field ${key}`);
    const doc = body.slice(body.lastIndexOf("/**", at), at);
    assert(doc.includes("@default"), `${key}: no @default in ${doc}`);
  }
  const help = trainCommand.help;
  const stated: [keyof TrainSettings, string][] = [
    ["epochs", "(default 10)"],
    ["stepsPerEpoch", "(default 25)"],
    ["crop", "(default 32)"],
    ["batch", "(default 1)"],
    ["lr", "(default 3e-3)"],
    ["optimizer", "(default adam)"],
    ["weightDecay", "(default 0)"],
    ["valCases", "(default 1)"],
    ["valEvery", "(default 1)"],
    ["seed", "(default 0)"],
  ];
  for (const [key, text] of stated) {
    const line = help.split("\n").find((l) => l.trimStart().startsWith(`${SETTING_FLAGS[key]} `));
    assert(line?.includes(text), `${SETTING_FLAGS[key]}: ${line}`);
    assertEquals(String(d[key]), text.slice("(default ".length, -1).replace("3e-3", "0.003"));
  }
  assertEquals(d.valWindow, d.crop, "--val-window: default the crop");
  assertEquals(d.augment, true);
});

Deno.test("checkSettings: a setting out of range, not a multiple of the crop multiple, or an unknown optimizer is a SettingsError naming its flag", () => {
  const d = defaultSettings("x"); // reference network: crop multiple 8
  const cases: [Partial<TrainSettings>, string, string][] = [
    [{ epochs: 0 }, "--epochs", "--epochs must be an integer >= 1, got 0"],
    [{ stepsPerEpoch: 2.5 }, "--steps-per-epoch", "--steps-per-epoch must be an integer >= 1"],
    [{ lr: -1 }, "--lr", "--lr must be a number >= 0, got -1"],
    [{ valCases: -1 }, "--val-cases", "--val-cases must be an integer >= 0"],
    [
      { foregroundFraction: 2 },
      "foregroundFraction",
      "foregroundFraction must be a number >= 0 <= 1, got 2",
    ],
    [{ lr: NaN }, "--lr", "--lr must be a number >= 0, got NaN"],
    [{ crop: 36 }, "--crop", "--crop 36 must be a multiple of 8 (4 levels)"],
    [{ valWindow: 20 }, "--val-window", "--val-window 20 must be a multiple of 8"],
    [{ optimizer: "rms" as "adam" }, "--optimizer", '--optimizer must be adam or sgd, got "rms"'],
  ];
  for (const [over, flag, text] of cases) {
    const e = assertThrows(() => checkSettings({ ...d, ...over }), SettingsError);
    assertEquals(e.flag, flag);
    assert(e.message.startsWith(text), `${e.message} (wanted ${text})`);
  }
  checkSettings(d);
  // The command line's bounds on a flag are typo guards, not the engine's: --crop auto may pick more.
  assertEquals(SETTING_LIMITS.crop.flagMax, 512);
  checkSettings({ ...d, crop: 520, valWindow: 520 });
});

Deno.test("newRunSettings: the defaults under what is given, the validation window the crop unless given", () => {
  assertEquals(newRunSettings("d", {}), defaultSettings("d"));
  const s = newRunSettings("d", { crop: 48, epochs: 2 });
  assertEquals([s.crop, s.valWindow, s.epochs, s.batch], [48, 48, 2, 1]);
  assertEquals(newRunSettings("d", { crop: 48, valWindow: 64 }).valWindow, 64);
  assertEquals(
    assertThrows(() => newRunSettings("d", { crop: 40, valWindow: 12 }), SettingsError).flag,
    "--val-window",
  );
});

Deno.test("networkConfigFlag: inline JSON or a file; unreadable, malformed or out-of-range is a SettingsError of --config", async () => {
  assertEquals(networkConfigFlag('{"levels":3}').levels, 3);
  const file = await Deno.makeTempFile({ suffix: ".json" });
  try {
    await Deno.writeTextFile(file, '{"baseChannels":8}');
    assertEquals(networkConfigFlag(file).baseChannels, 8);
  } finally {
    await Deno.remove(file);
  }
  for (
    const [value, text] of [
      ["{bad", "--config: not valid JSON ("],
      [
        "/nonexistent/c.json",
        "--config /nonexistent/c.json: neither inline JSON nor a readable file (",
      ],
      ['{"levels":100}', "--config: Network configuration: levels must be at most 10, found 100"],
    ]
  ) {
    const e = assertThrows(() => networkConfigFlag(value), SettingsError);
    assertEquals(e.flag, "--config");
    assert(e.message.startsWith(text), e.message);
  }
});

Deno.test("trainEventPrinter: log lines as `train: ...`, steps as the progress line with its ETA", () => {
  const drawn: string[] = [];
  const print = trainEventPrinter({
    log: (m) => drawn.push(`log ${m}`),
    update: (label, done, total, text, eta) =>
      drawn.push(`bar ${label} ${done}/${total} ${text} ${eta}`),
  });
  const events: TrainEvent[] = [
    { kind: "log", message: "backend: cpu" },
    { kind: "case-loaded", id: "c1", done: 1, total: 3 },
    {
      kind: "step",
      epoch: 2,
      step: 7,
      loss: 0.812345,
      epochs: 10,
      stepInEpoch: 2,
      stepsPerEpoch: 5,
      lr: 0.0029,
      secondsPerStep: 0.4123,
      secondsLeft: 62,
    },
    { kind: "validated-case", epoch: 2, id: "c3", done: 1, total: 1 },
  ];
  for (const e of events) print(e);
  assertEquals(drawn, [
    "log train: backend: cpu",
    "bar epoch 2/10 2/5 step 2/5 loss 0.8123 lr 2.9e-3 0.41 s/step 62",
  ]);
});

Deno.test("train(): prints nothing itself, tells onProgress its log; refuses with a SettingsError naming the flag, writing nothing", async () => {
  const data = await dataset();
  const dir = await Deno.makeTempDir();
  try {
    // A run in a process of its own, without onProgress: nothing on standard error.
    const script = `${dir}/run.ts`;
    await Deno.writeTextFile(
      script,
      `import { train } from "${ROOT}pipeline/training/mod.ts";
import { tinySettings } from "${ROOT}tests/_train_fixtures.ts";
const r = await train(tinySettings(${JSON.stringify(data)}, { epochs: 1 }), { out: ${
        JSON.stringify(`${dir}/quiet`)
      }, workers: 0 });
console.log(JSON.stringify({ steps: r.steps }));`,
    );
    const run = await runCommand(Deno.execPath(), [
      "run",
      "-A",
      "--config",
      `${ROOT}deno.json`,
      script,
    ]);
    assertEquals(run.code, 0, run.stderr);
    assertEquals(JSON.parse(run.stdout).steps, 2);
    assertEquals(run.stderr.replace(/^(Download|Check|Warning).*\n/gm, ""), "", run.stderr);

    const logged: string[] = [];
    const onProgress = (e: TrainEvent) => e.kind === "log" && logged.push(e.message);
    await train(tinySettings(data, { epochs: 1 }), { out: `${dir}/told`, workers: 0, onProgress });
    assert(logged.some((m) => m.startsWith("backend: using cpu")), logged.join("\n"));
    assert(logged.some((m) => /^epoch 1: loss \d/.test(m)), logged.join("\n"));
    assert(logged.at(-1)!.startsWith("done: 2 steps in "), logged.join("\n"));

    const refused = [
      [
        tinySettings(data, { valCases: 3 }),
        `${dir}/val`,
        "--val-cases",
        "--val-cases 3 leaves no training case",
      ],
      [tinySettings(data), `${data}/run`, "--out", `--out ${data}/run is inside the --data folder`],
      [
        tinySettings(data, { crop: 7 }),
        `${dir}/crop`,
        "--crop",
        "--crop must be an integer >= 8, got 7",
      ],
    ] as const;
    for (const [settings, out, flag, text] of refused) {
      const e = await assertRejects(
        () => train({ ...settings }, { out, workers: 0 }),
        SettingsError,
      );
      assertEquals(e.flag, flag);
      assert(e.message.startsWith(text), e.message);
      assert(await pathMissing(`${out}/latest.json`), `${out}: no checkpoint`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
