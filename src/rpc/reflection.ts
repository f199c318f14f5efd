import { createRegistry, type DescFile, type DescService, toBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import * as v1 from "../../gen/grpc/reflection/v1/reflection_pb.js";
import * as v1alpha from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";

type Request = v1.ServerReflectionRequest | v1alpha.ServerReflectionRequest;

/**
 * gRPC server reflection (grpc.reflection.v1, and v1alpha for older tools), so grpcurl, Postman and other generic
 * clients can list the services and call them without the .proto files. Answers from the descriptors compiled
 * into gen/: a file is sent with every file it imports, dependencies first.
 */
export function createReflection(services: readonly DescService[]) {
  const files = new Map<string, DescFile>();
  const collect = (f: DescFile) => {
    if (files.has(f.name)) return;
    files.set(f.name, f);
    for (const dep of f.dependencies) collect(dep);
  };
  for (const s of services) collect(s.file);
  const registry = createRegistry(...files.values());
  const names = services.map((s) => s.typeName);

  /** The file and everything it imports, dependencies first, each once. */
  function closure(file: DescFile): Uint8Array[] {
    const out: Uint8Array[] = [];
    const seen = new Set<string>();
    const visit = (f: DescFile) => {
      if (seen.has(f.name)) return;
      seen.add(f.name);
      for (const dep of f.dependencies) visit(dep);
      out.push(toBinary(FileDescriptorProtoSchema, f.proto));
    };
    visit(file);
    return out;
  }

  function fileBySymbol(symbol: string): DescFile | undefined {
    const direct = registry.get(symbol);
    if (direct) return direct.file;
    // A method or a field: look up its parent.
    const dot = symbol.lastIndexOf(".");
    return dot > 0 ? registry.get(symbol.slice(0, dot))?.file : undefined;
  }

  /** The answer to one request, as the oneof of either version's response (the shapes are identical). */
  function answer(req: Request) {
    const m = req.messageRequest;
    const notFound = (what: string) => ({
      case: "errorResponse" as const,
      value: { errorCode: 5, errorMessage: `${what} not found` },
    });
    switch (m.case) {
      case "listServices":
        return { case: "listServicesResponse" as const, value: { service: names.map((name) => ({ name })) } };
      case "fileByFilename": {
        const file = files.get(m.value.replace(/\.proto$/, ""));
        return file ? { case: "fileDescriptorResponse" as const, value: { fileDescriptorProto: closure(file) } } : notFound(`file "${m.value}"`);
      }
      case "fileContainingSymbol": {
        const file = fileBySymbol(m.value);
        return file ? { case: "fileDescriptorResponse" as const, value: { fileDescriptorProto: closure(file) } } : notFound(`symbol "${m.value}"`);
      }
      case "fileContainingExtension":
        return notFound("extension");
      case "allExtensionNumbersOfType":
        return registry.getMessage(m.value)
          ? { case: "allExtensionNumbersResponse" as const, value: { baseTypeName: m.value, extensionNumber: [] } }
          : notFound(`type "${m.value}"`);
      default:
        return { case: "errorResponse" as const, value: { errorCode: 3, errorMessage: "empty request" } };
    }
  }

  const v1Impl: ServiceImpl<typeof v1.ServerReflection> = {
    async *serverReflectionInfo(requests) {
      for await (const req of requests) {
        yield { validHost: req.host, originalRequest: req, messageResponse: answer(req) } as v1.ServerReflectionResponse;
      }
    },
  };
  const v1alphaImpl: ServiceImpl<typeof v1alpha.ServerReflection> = {
    async *serverReflectionInfo(requests) {
      for await (const req of requests) {
        yield { validHost: req.host, originalRequest: req, messageResponse: answer(req) } as v1alpha.ServerReflectionResponse;
      }
    },
  };
  return { v1: v1Impl, v1alpha: v1alphaImpl };
}
