import type { DescMethod } from "@bufbuild/protobuf";
import type { Permission } from "../auth/access.js";

/**
 * What every RPC needs, by full procedure name. An RPC missing here is refused (fail closed), and a test walks
 * the generated service descriptors to make sure every RPC has an entry.
 */
export const RPC_PERMISSIONS: Readonly<Record<string, Permission>> = {
  "latchkey.v1.SecretService.StoreSecret": "admin",
  "latchkey.v1.SecretService.GetSecret": "read",
  "latchkey.v1.SecretService.ListSecrets": "admin",
  "latchkey.v1.SecretService.UpdateSecret": "admin",
  "latchkey.v1.SecretService.DeleteSecret": "admin",
  "latchkey.v1.SecretService.RotateSecret": "admin",
  "latchkey.v1.SecretService.VerifySecret": "read",
  "latchkey.v1.SecretService.WatchSecrets": "read",
};

export function permissionFor(method: DescMethod): Permission | undefined {
  return RPC_PERMISSIONS[`${method.parent.typeName}.${method.name}`];
}
