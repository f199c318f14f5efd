import type { DescMethod } from "@bufbuild/protobuf";
import type { Permission } from "../auth/access.js";

/**
 * What every RPC needs, by full procedure name. An RPC missing here is refused (fail closed), and a test walks
 * the generated service descriptors to make sure every RPC has an entry.
 */
export const RPC_PERMISSIONS: Readonly<Record<string, Permission>> = {
  "latchkey.v1.SecretService.StoreSecret": "manage",
  "latchkey.v1.SecretService.GetSecret": "read",
  "latchkey.v1.SecretService.ListSecrets": "manage",
  "latchkey.v1.SecretService.UpdateSecret": "manage",
  "latchkey.v1.SecretService.DeleteSecret": "manage",
  "latchkey.v1.SecretService.RotateSecret": "manage",
  "latchkey.v1.SecretService.VerifySecret": "read",
  "latchkey.v1.SecretService.WatchSecrets": "read",
  "latchkey.v1.SecretService.ListSecretVersions": "manage",
  "latchkey.v1.SecretService.SetVersionState": "manage",
  "latchkey.v1.SecretService.UndeleteSecret": "manage",
  "latchkey.v1.SecretService.CopySecret": "manage",
  "latchkey.v1.SecretService.RenameSecret": "manage",
  "latchkey.v1.SecretService.MoveSecret": "manage",
  "latchkey.v1.SecretService.BatchUpsertSecrets": "manage",
  "latchkey.v1.SecretService.BatchDeleteSecrets": "manage",
  "latchkey.v1.SecretService.BatchGetSecrets": "read",
  "latchkey.v1.StoreService.CreateStore": "manage",
  "latchkey.v1.StoreService.GetStore": "manage",
  "latchkey.v1.StoreService.ListStores": "manage",
  "latchkey.v1.StoreService.DeleteStore": "manage",
  "latchkey.v1.StoreService.GetUsage": "manage",
  "latchkey.v1.VarService.SetVars": "manage",
  "latchkey.v1.VarService.GetVar": "read",
  "latchkey.v1.VarService.ListVars": "read",
  "latchkey.v1.VarService.DeleteVar": "manage",
};

export function permissionFor(method: DescMethod): Permission | undefined {
  return RPC_PERMISSIONS[`${method.parent.typeName}.${method.name}`];
}
