/**
 * The same bytes across refactors: a fixed synth → train → segment run on the cpu backend must give
 * the very weights and label maps that the code gave before the stage packages (issue 14) were
 * reshaped, commit 1a6e332. A change that alters either on purpose (a new default, another
 * initialisation) updates these digests in the same commit and says so.
 * @module
 */
import { assertEquals } from "@std/assert";
import { runMain } from "./_cli.ts";
import { sha256Hex } from "../pipeline/training/model_store.ts";

/** SHA-256 of each output, recorded from commit 1a6e332. */
const GOLDEN: Record<string, string> = {
  "run/best/model.safetensors": "36c02d96fbb14facd7d53b17c1f66460916413f8ab625402f670530da0d8219f",
  "run/checkpoints/epoch-0001-step-0000003/model.safetensors":
    "ac250619e6c461231be6637a4d40c3bf6107b624c6cb4808efa820bd66f685a7",
  "run/checkpoints/epoch-0001-step-0000003/optimizer.safetensors":
    "2497e22826e9d0f3fbde44fe04ec4d0c9cb4cc420917d9f797d7d107adda9f7a",
  "run/checkpoints/epoch-0002-step-0000006/optimizer.safetensors":
    "7f14ac9ed9777c56c4bc1e5ec02f9383bd0b078616b1dbc30caa8588631fa955",
  "seg/BraTS2021_00000.nii.gz": "9fc52fc03a6dff0522c433679797837a3f1f417f635730e4a06425fddd5fb07e",
  "seg/BraTS2021_00001.nii.gz": "7cb8c774849342dff86e494303a2c9e8612b9f67c6113093b6cd0ac1842222cf",
  "seg/BraTS2021_00002.nii.gz": "7fdd1883eb41f10745a085c64e219c3a55539cd0e01b255eeda7e6a2517c814d",
};

Deno.test("golden: synth, train (cpu, seed 7) and segment give the recorded weights and label maps byte for byte", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const steps: string[][] = [
      ["synth", "--out", `${dir}/data`, "--cases", "3", "--size", "40,40,32", "--seed", "5"]
        .concat(["--template", "procedural", "--naming", "brats2021"]),
      ["train", "--data", `${dir}/data`, "--out", `${dir}/run`, "--epochs", "2"]
        .concat(["--steps-per-epoch", "3", "--crop", "16", "--val-cases", "1", "--seed", "7"])
        .concat(["--backend", "cpu", "--workers", "1", "--quiet"]),
      ["segment", "--model", `${dir}/run`, "--input", `${dir}/data`, "--out", `${dir}/seg`]
        .concat(["--backend", "cpu", "--window", "24"]),
    ];
    for (const args of steps) {
      const run = await runMain(args);
      assertEquals(run.code, 0, `${args[0]} failed:\n${run.stderr}`);
    }
    const got: Record<string, string> = {};
    for (const path of Object.keys(GOLDEN)) {
      got[path] = sha256Hex(await Deno.readFile(`${dir}/${path}`));
    }
    assertEquals(got, GOLDEN);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
