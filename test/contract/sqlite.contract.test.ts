import { rmSync } from "node:fs";
import { join } from "node:path";
import { createSqliteStorage } from "../../src/storage/sqlite/sqlite-storage.js";
import { tempDir } from "../support/server.js";
import { exerciseStorage } from "./storage.contract.js";

const dirs: string[] = [];

exerciseStorage("sqlite", {
  async open() {
    const dir = tempDir("latchkey-contract-");
    dirs.push(dir);
    const file = join(dir, "latchkey.db");
    return { storage: createSqliteStorage(file), peer: async () => createSqliteStorage(file) };
  },
  async cleanup() {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  },
});
