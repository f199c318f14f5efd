import { pino, type DestinationStream, type Logger } from "pino";

export type { Logger } from "pino";

/**
 * Paths pino censors even if a value slips into a log object. Log objects are built from named fields
 * (names, versions, codes) and never from request bodies, so these are a second line of defence.
 */
export const REDACT_PATHS = [
  "value",
  "*.value",
  "plaintext",
  "*.plaintext",
  "token",
  "*.token",
  "authorization",
  "*.authorization",
  "headers.authorization",
  "*.headers.authorization",
  "masterKey",
  "*.masterKey",
];

/** Creates the process logger: JSON lines on stdout (or `destination`), secrets censored. */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: "latchkey" },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: REDACT_PATHS, censor: "[redacted]" },
      formatters: { level: (label) => ({ level: label }) },
    },
    destination,
  );
}
