import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto";

/** AES-256-GCM with a fresh 96-bit nonce per message: output is nonce || ciphertext || tag. */
const NONCE = 12;
const TAG = 16;

export function seal(key: Buffer, plaintext: Uint8Array, aad: string): Buffer {
  const nonce = randomBytes(NONCE);
  const cipher = createCipheriv("aes-256-gcm", key, nonce);
  cipher.setAAD(Buffer.from(aad, "utf8"));
  const head = cipher.update(plaintext);
  const tail = cipher.final();
  return Buffer.concat([nonce, head, tail, cipher.getAuthTag()]);
}

/** Opens what `seal` made. Throws if the key, the AAD or any byte is wrong. */
export function open(key: Buffer, box: Buffer, aad: string): Buffer {
  if (box.length < NONCE + TAG) throw new Error("sealed box is truncated");
  const decipher = createDecipheriv("aes-256-gcm", key, box.subarray(0, NONCE));
  decipher.setAAD(Buffer.from(aad, "utf8"));
  decipher.setAuthTag(box.subarray(box.length - TAG));
  const head = decipher.update(box.subarray(NONCE, box.length - TAG));
  const tail = decipher.final();
  return tail.length === 0 ? head : Buffer.concat([head, tail]);
}

/** A short public identifier of a key: the first 8 bytes of its SHA-256, hex. */
export function keyId(key: Buffer): string {
  return createHash("sha256").update("latchkey key id\0").update(key).digest("hex").slice(0, 16);
}
