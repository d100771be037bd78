#if canImport(Glibc)
import Glibc
#endif
import Foundation
import KilnModel
import KilnOCI
import KilnTOE

/// The parent image forms a recipe may name, each turned into an image in Kiln's store:
/// a registry reference, `oci-layout:PATH:TAG`, `oci-archive:…`, `kiln:NAME`, `scratch`, or
/// `bootstrap:debian:SUITE` / `bootstrap:ubuntu:SUITE` (mmdebstrap --variant=minbase, cached).
public struct ParentImageResolver: Sendable {
    public let transfer: ImageTransfer
    /// Debian-style mirrors by distribution; the host's apt sources are the default for Debian.
    public var mirrors: [String: String]
    public var observer: (@Sendable (String) -> Void)?

    public init(transfer: ImageTransfer, mirrors: [String: String] = [:], observer: (@Sendable (String) -> Void)? = nil) {
        self.transfer = transfer
        self.mirrors = mirrors
        self.observer = observer
    }

    var store: ContentStore { transfer.store }

    /// The parent's manifest descriptor in the store.
    public func resolve(_ text: String) async throws -> Descriptor {
        if text == "scratch" { return try scratch() }
        if text.hasPrefix("bootstrap:") { return try await bootstrap(text) }
        if let named = try store.resolve(text) { return named }
        let location = try ImageLocation(text)
        if case .store(let name) = location {
            guard let named = try store.resolve(name) else { throw KilnError(.notFound, "\(text) is not in Kiln's content store; see kiln image ls") }
            return named
        }
        let name = if case .registry(let reference) = location { reference.description } else { text }
        _ = try await transfer.copy(from: location, to: [.store(name: name)]).checked()
        guard let pulled = try store.resolve(name) else { throw KilnError(.internalError, "\(text) was pulled but is not named in the store") }
        return pulled
    }

    /// An image with no layers at all.
    func scratch() throws -> Descriptor {
        let platform = transfer.platform ?? .host
        let config = try store.ingestJSON(ImageConfiguration(architecture: platform.architecture, os: platform.os, rootfs: .init(diffIDs: [])), mediaType: MediaType.imageConfig)
        let manifest = try store.ingestJSON(ImageManifest(config: config, layers: []), mediaType: MediaType.imageManifest)
        try store.tag("scratch", manifest)
        return manifest
    }

    /// `bootstrap:debian:bookworm`: made once with mmdebstrap, then reused by name.
    func bootstrap(_ text: String) async throws -> Descriptor {
        let parts = text.split(separator: ":").map(String.init)
        guard parts.count == 3, ["debian", "ubuntu"].contains(parts[1]), !parts[2].isEmpty, parts[2].allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" }) else {
            throw KilnError(.invalidArgument, "'\(text)' is not a bootstrap parent; use bootstrap:debian:SUITE or bootstrap:ubuntu:SUITE (e.g. bootstrap:debian:bookworm)")
        }
        let (distribution, suite) = (parts[1], parts[2])
        let name = "bootstrap/\(distribution):\(suite)"
        if let cached = try store.resolve(name) { return cached }
        guard access("/usr/bin/mmdebstrap", X_OK) == 0 else {
            throw KilnError(.notFound, "mmdebstrap is not installed; install the Debian package mmdebstrap (scripts/setup does)")
        }
        guard let mirror = mirrors[distribution] ?? (distribution == "debian" ? Self.hostDebianMirror() : nil) else {
            throw KilnError(.invalidArgument, "no \(distribution) mirror is configured; set bootstrap.mirrors.\(distribution) in kiln.yaml")
        }
        let directory = store.scratch + "/bootstrap-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        observer?("bootstrapping \(distribution) \(suite) from \(mirror) with mmdebstrap --variant=minbase")
        let log = OutputCollector()
        let result = try await ProcessRunner.run(
            executablePath: "/usr/bin/mmdebstrap", argumentZero: "mmdebstrap",
            arguments: ["--quiet", "--mode=root", "--variant=minbase", suite, directory, mirror],
            environment: ProcessInfo.processInfo.environment, workingDirectory: nil, timeout: .seconds(1800)
        ) { _, bytes in log.append(bytes) }
        guard result.exitCode == 0 else {
            throw KilnError(.execFailure, "mmdebstrap could not bootstrap \(distribution) \(suite) from \(mirror) (exit \(result.exitCode)): \(log.text.suffix(1500))")
        }
        observer?("packing the \(suite) root filesystem into \(name)")
        return try store.importRootFilesystem(directory, name: name, createdBy: "mmdebstrap --variant=minbase \(suite) \(mirror)")
    }

    /// The first `deb` URI of the host's apt sources (one-line or deb822 format).
    static func hostDebianMirror() -> String? {
        var files = ["/etc/apt/sources.list"]
        files += ((try? FileManager.default.contentsOfDirectory(atPath: "/etc/apt/sources.list.d")) ?? []).sorted().map { "/etc/apt/sources.list.d/" + $0 }
        for file in files {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { continue }
            for line in text.split(separator: "\n") {
                let words = line.split(separator: " ").map(String.init)
                if words.first == "deb", let uri = words.dropFirst().first(where: { $0.hasPrefix("http") }) { return uri }
                if words.first == "URIs:", words.count > 1 { return words[1] }
            }
        }
        return nil
    }
}
