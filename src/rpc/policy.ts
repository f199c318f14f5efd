import type { DescMethod } from "@bufbuild/protobuf";
import { type Action, RPC_POLICY } from "../auth/policy.js";

/** The RPC half of the access policy (src/auth/policy.ts), looked up by method descriptor. */
export { RPC_POLICY as RPC_PERMISSIONS } from "../auth/policy.js";

/** The action an RPC needs, or undefined for an RPC the policy does not know (refused: fail closed). */
export function permissionFor(method: DescMethod): Action | undefined {
  return RPC_POLICY[`${method.parent.typeName}.${method.name}`];
}
