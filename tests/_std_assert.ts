/**
 * The subset of `@std/assert` this project uses, on `node:assert/strict`.
 *
 * JSR (where `@std/assert` lives) cannot be reached from the project's machines, so the import map
 * points `@std/assert` here; once JSR is reachable, mapping it to `jsr:@std/assert@1` is a one-line
 * change and these names keep their meaning.
 * @module
 */
import assert from "node:assert/strict";

/** Asserts that `actual` and `expected` are deeply equal. */
export function assertEquals<T>(actual: T, expected: T, msg?: string): void {
  assert.deepStrictEqual(actual, expected, msg as string);
}

/** Asserts that `actual` and `expected` are not deeply equal. */
export function assertNotEquals<T>(actual: T, expected: T, msg?: string): void {
  assert.notDeepStrictEqual(actual, expected, msg as string);
}

/** Asserts that `expr` is truthy. */
export function assert_(expr: unknown, msg?: string): asserts expr {
  assert.ok(expr, msg as string);
}
export { assert_ as assert };

/** Asserts that `actual` is within `tolerance` of `expected`. */
export function assertAlmostEquals(
  actual: number,
  expected: number,
  tolerance = 1e-7,
  msg?: string,
): void {
  if (!(Math.abs(actual - expected) <= tolerance)) {
    throw new assert.AssertionError({
      message: msg ??
        `Expected ${actual} to be within ${tolerance} of ${expected} (difference ${
          Math.abs(actual - expected)
        })`,
      actual,
      expected,
    });
  }
}

/** Asserts that `actual` contains `expected` as a substring. */
export function assertStringIncludes(actual: string, expected: string, msg?: string): void {
  if (!actual.includes(expected)) {
    throw new assert.AssertionError({
      message: msg ?? `Expected ${JSON.stringify(actual)} to include ${JSON.stringify(expected)}`,
      actual,
      expected,
    });
  }
}

type ErrorClass<E extends Error> = abstract new (...args: never[]) => E;

/** Asserts that `fn` throws an error of class `ErrorClass` whose message includes `msgIncludes`. */
export function assertThrows<E extends Error = Error>(
  fn: () => unknown,
  errorClass?: ErrorClass<E>,
  msgIncludes?: string,
): E {
  try {
    fn();
  } catch (e) {
    return checkError(e, errorClass, msgIncludes);
  }
  throw new assert.AssertionError({ message: "Expected function to throw." });
}

/** Asserts that the promise returned by `fn` rejects like {@linkcode assertThrows}. */
export async function assertRejects<E extends Error = Error>(
  fn: () => PromiseLike<unknown>,
  errorClass?: ErrorClass<E>,
  msgIncludes?: string,
): Promise<E> {
  try {
    await fn();
  } catch (e) {
    return checkError(e, errorClass, msgIncludes);
  }
  throw new assert.AssertionError({ message: "Expected promise to reject." });
}

function checkError<E extends Error>(
  e: unknown,
  errorClass?: ErrorClass<E>,
  msgIncludes?: string,
): E {
  if (!(e instanceof Error)) {
    throw new assert.AssertionError({ message: `Expected an Error, got ${String(e)}` });
  }
  if (errorClass && !(e instanceof errorClass)) {
    throw new assert.AssertionError({
      message:
        `Expected error to be instance of "${errorClass.name}", but was "${e.constructor.name}": ${e.message}`,
    });
  }
  if (msgIncludes !== undefined && !e.message.includes(msgIncludes)) {
    throw new assert.AssertionError({
      message: `Expected error message to include ${JSON.stringify(msgIncludes)}, but got ${
        JSON.stringify(e.message)
      }`,
    });
  }
  return e as E;
}
