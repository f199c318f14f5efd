/** Latchkey as a library: start the service in-process, or load its configuration. */
export { type App, type AppOverrides, createApp } from "./app.js";
export { type Config, ConfigError, loadConfig } from "./config/config.js";
export * from "./client/index.js";
