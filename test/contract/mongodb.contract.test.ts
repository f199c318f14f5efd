import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { MongoClient } from "mongodb";
import { createLogger } from "../../src/log/logger.js";
import { createMongoStorage } from "../../src/storage/mongodb/mongo-storage.js";
import { exerciseStorage } from "./storage.contract.js";

/**
 * The storage contract against a real MongoDB replica set (change streams need one), when MONGODB_URI points at
 * one, e.g. `mongod --replSet rs0 --dbpath /tmp/rs0` then `mongosh --eval 'rs.initiate()'` and
 * MONGODB_URI=mongodb://127.0.0.1:27017/?replicaSet=rs0. Each run uses throwaway databases it drops afterwards.
 */
const uri = process.env.MONGODB_URI;

if (!uri) {
  const why = "MONGODB_URI is not set (it must point at a replica set): the MongoDB storage contract was NOT run";
  process.stderr.write(`SKIPPED: ${why}\n`);
  describe("Storage contract: mongodb", () => {
    it("runs against a MongoDB replica set", { skip: why }, () => {});
  });
} else {
  const logger = createLogger("warn");
  const dbs: string[] = [];
  exerciseStorage("mongodb", {
    async open() {
      const dbName = `latchkey_contract_${randomBytes(4).toString("hex")}`;
      dbs.push(dbName);
      return {
        storage: await createMongoStorage({ uri, dbName, logger }),
        peer: () => createMongoStorage({ uri, dbName, logger }),
      };
    },
    async cleanup() {
      const client = await MongoClient.connect(uri);
      try {
        for (const db of dbs.splice(0)) await client.db(db).dropDatabase();
      } finally {
        await client.close();
      }
    },
  });
}
