/**
 * Reading the environment where permission to may be missing: the project's switches
 * (`REVUNET_*`) and build settings then keep their defaults instead of throwing.
 * @module
 */

/** The variable's value; undefined when it is unset or env access is not allowed. */
export function envVar(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined;
  }
}
