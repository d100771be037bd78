import Foundation
import KilnModel

/// `S3Download`: one object, or every object under a `prefix/*`, into the instance.
struct S3DownloadAction: TOEAction {
    func run(_ inputs: InputValue?, context: ActionContext) async throws -> ActionResult {
        let reader = InputReader(value: inputs, action: "S3Download", stepPath: context.stepPath)
        let client = S3Client(configuration: context.transfers.s3, http: context.transfers.http)
        for item in reader.items() {
            let source = try item.required("source")
            let destination = try item.required("destination")
            let overwrite = try item.bool("overwrite", default: true)
            let owner = item.string("expectedBucketOwner")
            let location = try S3Location(source)
            if location.key.hasSuffix("/*") || location.key == "*" {
                let prefix = String(location.key.dropLast())
                guard try await context.session.fileInfo(destination, followSymlinks: true)?.kind == .directory else {
                    throw context.failure("S3Download destination '\(destination)' must be an existing folder for the prefix \(source)")
                }
                let keys = try await client.list(bucket: location.bucket, prefix: prefix, expectedOwner: owner).filter {
                    !$0.hasSuffix("/")
                }
                context.log.info("S3Download: \(keys.count) object\(keys.count == 1 ? "" : "s") under \(source)")
                for key in keys {
                    let relative = String(key.dropFirst(prefix.count)).split(separator: "/").joined(separator: "/")
                    // Object keys are untrusted: none may climb out of the destination folder.
                    guard !relative.isEmpty, !relative.split(separator: "/").contains("..") else {
                        throw context.failure("S3Download: object key '\(key)' would land outside '\(destination)'; refusing it")
                    }
                    let target = join(destination, relative)
                    try await context.session.createDirectory(parent(of: target), mode: 0o755)
                    try await fetch(
                        S3Location(bucket: location.bucket, key: key), to: target, overwrite: overwrite, owner: owner, client: client,
                        context: context)
                }
            } else {
                var target = destination
                let destinationKind = try await context.session.fileInfo(destination, followSymlinks: true)?.kind
                if destination.hasSuffix("/") || destinationKind == .directory {
                    target = join(destination, basename(location.key))
                }
                guard try await context.session.fileInfo(parent(of: target), followSymlinks: true)?.kind == .directory else {
                    throw context.failure("S3Download: folder '\(parent(of: target))' does not exist; create it first (CreateFolder)")
                }
                try await fetch(location, to: target, overwrite: overwrite, owner: owner, client: client, context: context)
            }
        }
        return .completed([:])
    }

    func fetch(_ location: S3Location, to target: String, overwrite: Bool, owner: String?, client: S3Client, context: ActionContext)
        async throws
    {
        if !overwrite, try await context.session.fileInfo(target, followSymlinks: false) != nil {
            throw context.failure("S3Download: '\(target)' exists and overwrite is false")
        }
        let temporary = try HostScratch.file(basename(target))
        defer { try? FileManager.default.removeItem(atPath: temporary) }
        try await client.download(location, to: temporary, expectedOwner: owner, log: context.log)
        try await context.session.importFile(fromHost: temporary, to: target)
    }
}

extension S3Location {
    init(bucket: String, key: String) {
        self.bucket = bucket
        self.key = key
    }
}

/// `S3Upload`: a file, a `*` pattern, or (with recurse) a folder, from the instance to S3.
struct S3UploadAction: TOEAction {
    func run(_ inputs: InputValue?, context: ActionContext) async throws -> ActionResult {
        let reader = InputReader(value: inputs, action: "S3Upload", stepPath: context.stepPath)
        let client = S3Client(configuration: context.transfers.s3, http: context.transfers.http)
        let files = FileOperations(context: context, action: "S3Upload")
        for item in reader.items() {
            let source = try item.required("source")
            let destination = try S3Location(try item.required("destination"))
            let recurse = try item.bool("recurse", default: false)
            let owner = item.string("expectedBucketOwner")
            let matches = try await files.expand(source)
            guard !matches.isEmpty else { throw context.failure("S3Upload: nothing matches '\(source)'") }
            var uploads: [(path: String, relative: String)] = []
            for match in matches {
                let kind = try await context.session.fileInfo(match, followSymlinks: true)?.kind
                if kind == .directory {
                    guard recurse else {
                        throw context.failure("S3Upload: '\(match)' is a folder; set recurse: true to upload its contents")
                    }
                    let base = basename(match)
                    let listed = try await files.listFiles(
                        InputReader(
                            value: .map([
                                .init(key: "path", value: .string(match)), .init(key: "recursive", value: .string("true")),
                            ]), action: "S3Upload", stepPath: context.stepPath))
                    uploads += listed.map { ($0, base + "/" + String($0.dropFirst(match.count + (match.hasSuffix("/") ? 0 : 1)))) }
                } else {
                    uploads.append((match, basename(match)))
                }
            }
            let intoPrefix =
                destination.key.isEmpty || destination.key.hasSuffix("/") || uploads.count > 1 || source.contains("*") || recurse
            for upload in uploads {
                let key = intoPrefix ? destination.key + upload.relative : destination.key
                let temporary = try HostScratch.file(basename(upload.path))
                defer { try? FileManager.default.removeItem(atPath: temporary) }
                try await context.session.exportFile(upload.path, toHost: temporary)
                try await client.upload(
                    hostPath: temporary, to: S3Location(bucket: destination.bucket, key: key), expectedOwner: owner, log: context.log)
            }
        }
        return .completed([:])
    }
}
