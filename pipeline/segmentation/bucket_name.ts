/**
 * S3's rules for bucket names, by which an event naming a bucket S3 could not have is malformed.
 * @module
 */

/**
 * Why `name` cannot be an S3 bucket name (S3's rules for general purpose buckets, which MinIO
 * follows too), or undefined when it can be one.
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { bucketNameProblem } from "./bucket_name.ts";
 * assertEquals(bucketNameProblem("brats"), undefined);
 * assertEquals(bucketNameProblem("brats/seg"), "may contain only a-z, 0-9, '.' and '-'");
 * ```
 */
export function bucketNameProblem(name: string): string | undefined {
  if (name.length < 3 || name.length > 63) {
    return `must be 3 to 63 characters, found ${name.length}`;
  }
  if (!/^[a-z0-9.-]+$/.test(name)) return "may contain only a-z, 0-9, '.' and '-'";
  if (!/^[a-z0-9].*[a-z0-9]$/.test(name)) return "must begin and end with a letter or digit";
  if (name.includes("..")) return "may not contain two adjacent periods";
  if (/^\d+\.\d+\.\d+\.\d+$/.test(name)) return "may not be formatted as an IP address";
  const prefix = ["xn--", "sthree-", "amzn-s3-demo-"].find((p) => name.startsWith(p));
  if (prefix) return `may not begin with "${prefix}"`;
  const suffix = ["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"].find((s) =>
    name.endsWith(s)
  );
  if (suffix) return `may not end with "${suffix}"`;
  return undefined;
}
