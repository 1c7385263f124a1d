/**
 * Reports: HTML pages with PNG slices per case, training curves as SVG, and a progress line for
 * long loops.
 * @module
 */
export * from "./report.ts";
export * from "./plot.ts";
export * from "./case_report.ts";
export * from "./progress.ts";
export * from "./evaluation_report.ts";
