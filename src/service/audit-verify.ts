import { type ChainCheck, verifyChain } from "../domain/audit.js";
import type { Storage } from "../storage/storage.js";

/** Checks every chain of the audit log from its start, in batches; stops each chain at its first break. */
export async function verifyAuditLog(
  storage: Pick<Storage, "auditChains" | "scanAudit">,
): Promise<{ ok: boolean; chains: (ChainCheck & { chain: string })[] }> {
  const chains: (ChainCheck & { chain: string })[] = [];
  for (const chain of await storage.auditChains()) {
    let from: { seq: number; hash: string } | undefined;
    let checked = 0;
    let result: ChainCheck & { chain: string } = { ok: true, checked: 0, chain };
    for (;;) {
      const batch = await storage.scanAudit(chain, from?.seq ?? 0, 1000);
      if (batch.length === 0) break;
      // The first entry of a chain must start it: an entry removed from the front is a break too.
      if (from === undefined && batch[0] && batch[0].seq !== 1) {
        result = { ok: false, checked, brokenAt: batch[0].seq, reason: "the entries before it are missing", chain };
        break;
      }
      const r = verifyChain(batch, from);
      checked += r.checked;
      if (!r.ok) {
        result = { ok: false, checked, ...(r.brokenAt === undefined ? {} : { brokenAt: r.brokenAt }), ...(r.reason ? { reason: r.reason } : {}), chain };
        break;
      }
      from = r.last;
      result = { ok: true, checked, chain };
    }
    chains.push(result);
  }
  return { ok: chains.every((c) => c.ok), chains };
}
