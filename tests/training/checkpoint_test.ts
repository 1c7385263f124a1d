/**
 * A training run's checkpoints without a run: the rules of `--resume` on settings
 * (pipeline/training/settings.ts), and writing and reading checkpoints (pipeline/training/checkpoint.ts) — the
 * commit by `latest.json`, the two folders kept, the state read back, and states refused.
 */
import * as tf from "../../model/tf.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "@std/assert";
import {
  createUNet,
  disposeUNet,
  Optimizer,
  resolveConfig,
  serializeUNet,
  trainStep,
} from "../../model/mod.ts";
import {
  checkpointName,
  latestUri,
  loadCheckpointWeights,
  newTrainState,
  readCheckpointState,
  type TrainState,
  writeBest,
  writeCheckpoint,
} from "../../pipeline/training/checkpoint.ts";
import { loadModel, sha256Hex } from "../../pipeline/training/model_store.ts";
import {
  defaultSettings,
  resumedSettings,
  SettingsError,
  type TrainSettings,
} from "../../pipeline/training/settings.ts";
import { randomBatch } from "../_model_fixtures.ts";
import { TINY } from "../_train_fixtures.ts";

await tf.setBackend("cpu");

/** A stored run of the tiny network (crop multiple 2): 4 epochs of 5 steps. */
const stored: TrainSettings = {
  ...defaultSettings("s3://bucket/brats"),
  epochs: 4,
  stepsPerEpoch: 5,
  crop: 16,
  valWindow: 16,
  config: TINY,
};
/** Two epochs done and one step into the third. */
const midEpoch = { epoch: 2, stepInEpoch: 1 };

Deno.test("resumedSettings: a setting other than epochs, valEvery, valWindow and data conflicts, named by its flag", () => {
  const other: [Partial<TrainSettings>, string][] = [
    [{ stepsPerEpoch: 6 }, "--steps-per-epoch 6 (the run has 5)"],
    [{ crop: 32 }, "--crop 32 (the run has 16)"],
    [{ batch: 2 }, "--batch 2 (the run has 1)"],
    [{ lr: 0.01 }, "--lr 0.01 (the run has 0.003)"],
    [{ optimizer: "sgd" }, '--optimizer "sgd" (the run has "adam")'],
    [{ weightDecay: 0.1 }, "--weight-decay 0.1 (the run has 0)"],
    [{ valCases: 2 }, "--val-cases 2 (the run has 1)"],
    [{ seed: 5 }, "--seed 5 (the run has 0)"],
    [{ augment: false }, "--no-augment (the run trains with augmentation)"],
    [{ foregroundFraction: 0.5 }, "foregroundFraction 0.5 (the run has 0.3333333333333333)"],
    [
      { config: resolveConfig({ ...TINY, baseChannels: 8 }) },
      "--config: baseChannels 8 (the run has 4)",
    ],
  ];
  for (const [requested, text] of other) {
    const e = assertThrows(() => resumedSettings(stored, requested, midEpoch), SettingsError);
    assertEquals(
      e.message,
      `--resume keeps the settings the run started with, and these differ: ${text}. Drop them ` +
        "(only --epochs, --val-every, --val-window and --data may change), or start a new run " +
        "under another --out",
    );
  }
  const reverse = assertThrows(
    () => resumedSettings({ ...stored, augment: false }, { augment: true }, midEpoch),
    SettingsError,
  );
  assert(reverse.message.includes("augmentation on (the run trains with --no-augment)"));

  // Every conflict at once, in the order asked, even beside changes that are allowed.
  const all = assertThrows(
    () => resumedSettings(stored, { batch: 2, epochs: 6, seed: 5, lr: 0.01 }, midEpoch),
    SettingsError,
  );
  assert(
    all.message.includes(
      "differ: --batch 2 (the run has 1); --seed 5 (the run has 0); --lr 0.01 (the run has 0.003).",
    ),
    all.message,
  );
});

Deno.test("resumedSettings: the changes it applies and reports, the same values, and the stored settings untouched", () => {
  const copy = structuredClone(stored);
  const r = resumedSettings(stored, {
    data: "/mnt/brats",
    epochs: 6,
    valEvery: 2,
    valWindow: 24,
  }, midEpoch);
  assertEquals(r.settings, {
    ...stored,
    data: "/mnt/brats",
    epochs: 6,
    valEvery: 2,
    valWindow: 24,
  });
  assertEquals(r.changes, [
    "--data /mnt/brats: the run's cases are read from there (it was s3://bucket/brats)",
    "--epochs 6: the run now ends after epoch 6 (it was 4); the learning rate decays over 30 steps from here on",
    "--val-every 2 (it was 1)",
    "--val-window 24 (it was 16)",
  ]);
  assertEquals(stored, copy, "the stored settings are not changed");

  // The command line repeating the run's values, the configuration's fields in another order.
  const reordered = Object.fromEntries(Object.entries(TINY).reverse()) as typeof TINY;
  const again = resumedSettings(stored, {
    ...stored,
    config: reordered,
    foregroundFraction: 1 / 3,
  }, midEpoch);
  assertEquals(again, { settings: stored, changes: [] });
});

Deno.test("resumedSettings: --epochs may end the run no earlier than the epoch in progress", () => {
  // One step into epoch 3: it may end after epoch 3, not 2.
  assertEquals(resumedSettings(stored, { epochs: 3 }, midEpoch).settings.epochs, 3);
  assertThrows(
    () => resumedSettings(stored, { epochs: 2 }, midEpoch),
    SettingsError,
    "--epochs 2 with --resume: the run has started epoch 3, so it can end after epoch 3 at the earliest",
  );
  // Two epochs complete: the run may end there.
  const done = { epoch: 2, stepInEpoch: 0 };
  assertEquals(resumedSettings(stored, { epochs: 2 }, done).settings.epochs, 2);
  assertThrows(
    () => resumedSettings(stored, { epochs: 1 }, done),
    SettingsError,
    "--epochs 1 with --resume: the run has completed 2 epochs, so it can end after epoch 2 at the earliest",
  );
  // Nothing done yet: at least one epoch.
  assertThrows(
    () => resumedSettings(stored, { epochs: 0 }, { epoch: 0, stepInEpoch: 0 }),
    SettingsError,
    "after epoch 1 at the earliest",
  );
  assertThrows(
    () => resumedSettings(stored, { epochs: 3.5 }, midEpoch),
    SettingsError,
    "--epochs 3.5",
  );
  assertThrows(
    () => resumedSettings(stored, { valWindow: 15 }, midEpoch),
    SettingsError,
    "--val-window 15 must be a multiple of 2",
  );
});

/** A tiny network and an Adam optimizer after one step, so that it has moments to save. */
function trainedNet() {
  const net = createUNet(TINY, { seed: 5 });
  const optimizer = new Optimizer({ kind: "adam" });
  const { x, target } = randomBatch(net, 8);
  trainStep(net, optimizer, x, target, 1e-3);
  tf.dispose([x, target]);
  return { net, optimizer };
}

/** The state of `settings` after `epoch` epochs and `step` steps in all. */
function stateAt(settings: TrainSettings, epoch: number, step: number): TrainState {
  const s = newTrainState(settings);
  s.epoch = epoch;
  s.stepInEpoch = step - epoch * settings.stepsPerEpoch;
  s.globalStep = s.rng.counter = step;
  s.split = { train: ["BraTS2021_00001"], val: ["BraTS2021_00002"] };
  s.history = Array.from({ length: epoch }, (_, i) => ({
    epoch: i + 1,
    step: (i + 1) * settings.stepsPerEpoch,
    loss: 1 - i / 10,
    lr: 1e-3,
    seconds: 1,
  }));
  return s;
}

const readJson = async (path: string) => JSON.parse(await Deno.readTextFile(path));

Deno.test("writeCheckpoint commits with latest.json and keeps the two newest folders; the latest reads back whole", async () => {
  const dir = await Deno.makeTempDir();
  const before = tf.memory().numTensors;
  const { net, optimizer } = trainedNet();
  try {
    const settings = { ...stored, stepsPerEpoch: 2 };
    const names = [];
    for (const [epoch, step] of [[0, 0], [1, 2], [1, 3], [2, 4]]) {
      const state = stateAt(settings, epoch, step);
      const name = await writeCheckpoint(dir, net, optimizer, state);
      assertEquals(name, checkpointName(state));
      const { files, ...latest } = await readJson(latestUri(dir));
      assertEquals(latest, { checkpoint: name, epoch, step });
      const { files: stateFiles, ...written } = await readJson(`${dir}/${name}/state.json`);
      assertEquals(written, state);
      // Every file's digest as written: the weights' and optimizer's in both, state.json's in latest.
      for (const file of ["model.safetensors", "optimizer.safetensors", "state.json"]) {
        const bytes = await Deno.readFile(`${dir}/${name}/${file}`);
        const digest = { sha256: sha256Hex(bytes), bytes: bytes.length };
        assertEquals(files[file], digest, file);
        if (file !== "state.json") assertEquals(stateFiles[file], digest, file);
      }
      names.push(name);
    }
    assertEquals(names[1], "checkpoints/epoch-0001-step-0000002");
    // Pruned folders go entirely (no empty folders left, as with S3 prefixes).
    const left = [];
    for await (const e of Deno.readDir(`${dir}/checkpoints`)) left.push(`checkpoints/${e.name}`);
    assertEquals(left.sort(), names.slice(-2), "the two newest folders are kept");

    // Killed while writing a newer checkpoint: its folder is there, latest.json still names the
    // one before, and that is what a resumed run reads.
    await Deno.mkdir(`${dir}/checkpoints/epoch-0002-step-0000005`);
    await Deno.copyFile(
      `${dir}/${names[3]}/model.safetensors`,
      `${dir}/checkpoints/epoch-0002-step-0000005/model.safetensors`,
    );
    const read = await readCheckpointState(dir);
    assertEquals(read.checkpoint, names[3]);
    assertEquals(read.dir, `${dir}/${names[3]}`);
    assertEquals(read.state, stateAt(settings, 2, 4));

    const back = await loadCheckpointWeights(read.dir);
    assertEquals(back.optimizer.step, 1);
    for (const [name, w] of net.named) {
      assertEquals(back.net.named.get(name)!.dataSync(), w.dataSync(), name);
    }
    back.optimizer.dispose();
    disposeUNet(back.net);

    await Deno.remove(`${dir}/${names[3]}/optimizer.safetensors`);
    await assertRejects(
      () => loadCheckpointWeights(read.dir),
      Error,
      `${dir}/${names[3]}: checkpoint has no optimizer state`,
    );
  } finally {
    optimizer.dispose();
    disposeUNet(net);
    await Deno.remove(dir, { recursive: true });
  }
  assertEquals(tf.memory().numTensors, before, "every tensor disposed, also on the refused load");
});

Deno.test("writeBest stores the validation Dice with the best weights, or says they are the latest", async () => {
  const dir = await Deno.makeTempDir();
  const { net, optimizer } = trainedNet();
  try {
    const metadataOf = async () => {
      const { net: back, metadata } = await loadModel(`${dir}/best`);
      disposeUNet(back);
      return metadata;
    };
    const dice = { WT: 0.5, TC: 0.25, ET: 0.125 };
    await writeBest(dir, net, { crop: 16, epoch: 3, valDice: dice });
    const m = await metadataOf();
    assertEquals([m.train_crop, m.epoch, JSON.parse(m.val_dice), m.best_by], [
      "16",
      "3",
      dice,
      undefined,
    ]);
    await writeBest(dir, net, { crop: 16, epoch: 4 });
    const latest = await metadataOf();
    assertEquals([latest.epoch, latest.best_by, latest.val_dice], [
      "4",
      "latest (no validation cases)",
      undefined,
    ]);
  } finally {
    optimizer.dispose();
    disposeUNet(net);
    await Deno.remove(dir, { recursive: true });
  }
});

/** A `state.json` as the code before pipeline/checkpoint.ts wrote it, one step into epoch 2. */
const WRITTEN_BEFORE = {
  format: "revunet-train-state",
  version: 1,
  settings: {
    data: "/tmp/rf-compat/data",
    epochs: 2,
    stepsPerEpoch: 3,
    crop: 8,
    batch: 1,
    lr: 0.003,
    optimizer: "adam",
    weightDecay: 0,
    valCases: 1,
    valEvery: 1,
    valWindow: 16,
    config: {
      inChannels: 4,
      outChannels: 3,
      levels: 2,
      baseChannels: 4,
      blocksPerLevel: 1,
      expansion: 2,
      maxGroups: 8,
      activation: "relu6",
      epsilon: 0.00001,
      reversible: true,
    },
    seed: 0,
    augment: true,
    foregroundFraction: 0.3333333333333333,
  },
  epoch: 1,
  stepInEpoch: 1,
  globalStep: 4,
  epochLossSum: 1.5787575244903564,
  epochSeconds: 0.019646118000000115,
  history: [{
    epoch: 1,
    step: 3,
    loss: 1.733365813891093,
    lr: 0.0020827594879848214,
    seconds: 0.35,
    val_dice: { WT: 0.02113248442156597, TC: 0.001989060169070114, ET: 0.0011037527593818985 },
    val_mean_dice: 0.00807509911667266,
  }],
  best: { epoch: 1, meanDice: 0.00807509911667266 },
  split: { train: ["BraTS2021_00001", "BraTS2021_00003"], val: ["BraTS2021_00002"] },
  rng: { kind: "mulberry32-counter", seed: 0, counter: 4 },
};

Deno.test("readCheckpointState reads a state written before it, and refuses by name one whose rng disagrees or that is no training state", async () => {
  const dir = await Deno.makeTempDir();
  const name = "checkpoints/epoch-0001-step-0000004";
  const stateFile = `${dir}/${name}/state.json`;
  const put = (state: unknown) => Deno.writeTextFile(stateFile, JSON.stringify(state));
  try {
    await Deno.mkdir(`${dir}/${name}`, { recursive: true });
    await Deno.writeTextFile(
      latestUri(dir),
      JSON.stringify({ checkpoint: name, epoch: 1, step: 4 }) + "\n",
    );
    await put(WRITTEN_BEFORE);
    const read = await readCheckpointState(dir);
    assertEquals([read.checkpoint, read.dir], [name, `${dir}/${name}`]);
    assertEquals(read.state, WRITTEN_BEFORE as TrainState);

    const rng = WRITTEN_BEFORE.rng;
    for (
      const bad of [
        { ...rng, counter: 3 },
        { ...rng, seed: 1 },
        { ...rng, kind: "xorshift-counter" },
        undefined,
      ]
    ) {
      await put({ ...WRITTEN_BEFORE, rng: bad });
      await assertRejects(
        () => readCheckpointState(dir),
        Error,
        `${stateFile}: rng ${
          JSON.stringify(bad)
        } does not restate the run's seed 0 and step 4, so resuming would not draw what the run drew`,
      );
    }
    await put({ ...WRITTEN_BEFORE, format: "something-else" });
    await assertRejects(
      () => readCheckpointState(dir),
      Error,
      `${stateFile}: not a training state`,
    );
    await Deno.writeTextFile(stateFile, '{"format": "revunet-train-state",');
    await assertRejects(
      () => readCheckpointState(dir),
      SyntaxError,
      `${stateFile}: not valid JSON`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** `path` with `n` bytes from `at` (negative: from the end) inverted: same length, other bytes. */
async function flipBytes(path: string, n: number, at = -n) {
  const bytes = await Deno.readFile(path);
  const from = at < 0 ? bytes.length + at : at;
  for (let i = from; i < from + n; i++) bytes[i] ^= 0xff;
  await Deno.writeFile(path, bytes);
}

Deno.test("a checkpoint's files are checked against the digests it records: flipped bytes in any of them are refused by name", async () => {
  const dir = await Deno.makeTempDir();
  const before = tf.memory().numTensors;
  const { net, optimizer } = trainedNet();
  try {
    const name = await writeCheckpoint(dir, net, optimizer, stateAt(stored, 1, 6));
    const folder = `${dir}/${name}`;
    const pristine = new Map<string, Uint8Array>();
    for (const f of ["model.safetensors", "optimizer.safetensors", "state.json"]) {
      pristine.set(f, await Deno.readFile(`${folder}/${f}`));
    }
    const restore = async () => {
      for (const [f, b] of pristine) await Deno.writeFile(`${folder}/${f}`, b);
    };
    const resume = async () => {
      const read = await readCheckpointState(dir);
      const back = await loadCheckpointWeights(read.dir, read.files);
      back.optimizer.dispose();
      disposeUNet(back.net);
    };
    await resume(); // whole: reads back

    for (const f of ["model.safetensors", "optimizer.safetensors"]) {
      await flipBytes(`${folder}/${f}`, 64);
      await assertRejects(
        resume,
        Error,
        `${folder}/${f}: damaged file: its SHA-256 is`,
      );
      // Without the checkpoint's record (a file copied elsewhere), its own data digest refuses it.
      await assertRejects(
        () =>
          f === "model.safetensors"
            ? loadCheckpointWeights(folder)
            : loadCheckpointWeights(folder).then((b) => {
              b.optimizer.dispose();
              disposeUNet(b.net);
            }),
        Error,
        `${folder}/${f}: damaged weights: the SHA-256 of its tensor data is`,
      );
      await restore();
    }
    // state.json edited without breaking its JSON (a digit of the loss sum changed).
    const text = new TextDecoder().decode(pristine.get("state.json"));
    const edited = text.replace('"epochLossSum":0', '"epochLossSum":9');
    assert(edited !== text);
    await Deno.writeTextFile(`${folder}/state.json`, edited);
    await assertRejects(
      () => readCheckpointState(dir),
      Error,
      `${folder}/state.json: damaged file: its SHA-256 is`,
    );
    await restore();
    await resume();
  } finally {
    optimizer.dispose();
    disposeUNet(net);
    await Deno.remove(dir, { recursive: true });
  }
  assertEquals(tf.memory().numTensors, before, "every tensor disposed, also on refused loads");
});

Deno.test("model files carry their data digest: loadModel refuses damaged weights by name, and loads files written without one", async () => {
  const dir = await Deno.makeTempDir();
  const { net, optimizer } = trainedNet();
  try {
    await writeBest(dir, net, { crop: 16, epoch: 1 });
    const file = `${dir}/best/model.safetensors`;
    const { metadata } = await loadModel(`${dir}/best`).then((m) => {
      disposeUNet(m.net);
      return m;
    });
    assertEquals(metadata.data_sha256.length, 64);
    await flipBytes(file, 64);
    await assertRejects(
      () => loadModel(`${dir}/best`),
      Error,
      `${file}: damaged weights: the SHA-256 of its tensor data is`,
    );
    // A file without the digest (an older one, or another tool's) loads unchecked.
    await Deno.writeFile(`${dir}/old.safetensors`, serializeUNet(net));
    const old = await loadModel(`${dir}/old.safetensors`);
    assertEquals(old.metadata.data_sha256, undefined);
    disposeUNet(old.net);
  } finally {
    optimizer.dispose();
    disposeUNet(net);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("readCheckpointState validates state.json and latest.json field by field, and reads no checkpoint outside the run's own checkpoints/", async () => {
  const dir = await Deno.makeTempDir();
  const name = "checkpoints/epoch-0001-step-0000004";
  const stateFile = `${dir}/${name}/state.json`;
  const latestFile = latestUri(dir);
  const latest = { checkpoint: name, epoch: 1, step: 4 };
  const put = (file: string, value: unknown) => Deno.writeTextFile(file, JSON.stringify(value));
  try {
    await Deno.mkdir(`${dir}/${name}`, { recursive: true });
    await put(latestFile, latest);
    await put(stateFile, WRITTEN_BEFORE);
    await readCheckpointState(dir); // as written: accepted

    const settings = WRITTEN_BEFORE.settings;
    const states: [Record<string, unknown>, ErrorConstructor, string][] = [
      [{ globalStep: -5 }, RangeError, 'field "globalStep" must be an integer ≥ 0, found -5'],
      [{ epoch: "4" }, TypeError, 'field "epoch" must be an integer ≥ 0, found "4" (a string)'],
      [{ stepInEpoch: 1.5 }, RangeError, 'field "stepInEpoch" must be an integer ≥ 0, found 1.5'],
      [
        { stepInEpoch: 4 },
        RangeError,
        'field "stepInEpoch" must be at most settings.stepsPerEpoch (3), found 4',
      ],
      [
        { globalStep: 7, rng: { ...WRITTEN_BEFORE.rng, counter: 7 } },
        RangeError,
        'field "globalStep" must be epoch × settings.stepsPerEpoch + stepInEpoch (1 × 3 + 1 = 4), found 7',
      ],
      [{ version: 2 }, RangeError, 'field "version" must be 1, found 2'],
      [
        { settings: { ...settings, lr: "0.003" } },
        TypeError,
        'field "settings.lr" must be a finite number ≥ 0, found "0.003" (a string)',
      ],
      [
        { settings: { ...settings, optimizer: "adamw" } },
        RangeError,
        'field "settings.optimizer" must be "adam" or "sgd", found "adamw"',
      ],
      [
        { settings: { ...settings, stepsPerEpoch: 0 } },
        RangeError,
        'field "settings.stepsPerEpoch" must be an integer ≥ 1, found 0',
      ],
      [
        { settings: { ...settings, foregroundFraction: 2 } },
        RangeError,
        'field "settings.foregroundFraction" must be a finite number in [0, 1], found 2',
      ],
      [
        { settings: { ...settings, config: { ...settings.config, levels: 100 } } },
        RangeError,
        'field "settings.config": ',
      ],
      [{ settings: undefined }, TypeError, 'field "settings" must be an object, found nothing'],
      [
        { history: [] },
        TypeError,
        'field "history" must be a list of one entry per completed epoch (1), found []',
      ],
      [
        { epochLossSum: null },
        TypeError,
        'field "epochLossSum" must be a finite number, found null',
      ],
      [
        { best: { epoch: 1, meanDice: 7 } },
        RangeError,
        'field "best.meanDice" must be a finite number in [0, 1], found 7',
      ],
      [
        { split: { train: [1], val: [] } },
        TypeError,
        'field "split.train" must be a list of strings, found [1]',
      ],
      [
        { files: { "model.safetensors": { sha256: "x", bytes: 1 } } },
        TypeError,
        'field "files.model.safetensors.sha256" must be 64 hex digits, found "x"',
      ],
    ];
    for (const [over, E, text] of states) {
      await put(stateFile, { ...WRITTEN_BEFORE, ...over });
      await assertRejects(() => readCheckpointState(dir), E, `${stateFile}: ${text}`);
    }
    await put(stateFile, [1, 2]);
    await assertRejects(
      () => readCheckpointState(dir),
      TypeError,
      `${stateFile}: field "(the whole file)" must be an object`,
    );
    await put(stateFile, WRITTEN_BEFORE);

    // latest.json: a checkpoint of this run only, and the state it names.
    const outside =
      'field "checkpoint" must be a checkpoint folder of this run (checkpoints/epoch-EEEE-step-SSSSSSS';
    const latests: [Record<string, unknown>, ErrorConstructor, string][] = [
      [{ checkpoint: `../other-run/${name}` }, RangeError, outside],
      [{ checkpoint: `checkpoints/../../other-run/${name}` }, RangeError, outside],
      [{ checkpoint: `/tmp/other-run/${name}` }, RangeError, outside],
      [{ checkpoint: `s3://bucket/other-run/${name}` }, RangeError, outside],
      [{ checkpoint: `${name}/..` }, RangeError, outside],
      [{ checkpoint: 4 }, TypeError, 'field "checkpoint" must be a string, found 4'],
      [{ epoch: "1" }, TypeError, 'field "epoch" must be an integer ≥ 0, found "1" (a string)'],
      [{ step: -1 }, RangeError, 'field "step" must be an integer ≥ 0, found -1'],
    ];
    for (const [over, E, text] of latests) {
      await put(latestFile, { ...latest, ...over });
      await assertRejects(() => readCheckpointState(dir), E, `${latestFile}: ${text}`);
    }
    // A checkpoint folder of this run whose state is another step's (copied or renamed there).
    const other = "checkpoints/epoch-0001-step-0000005";
    await Deno.mkdir(`${dir}/${other}`);
    await put(`${dir}/${other}/state.json`, WRITTEN_BEFORE);
    await put(latestFile, { checkpoint: other, epoch: 1, step: 5 });
    await assertRejects(
      () => readCheckpointState(dir),
      RangeError,
      `${dir}/${other}/state.json: holds epoch 1, step 4, but ${latestFile} names ${other} at epoch 1, step 5`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
